//! A fresh Postgres database per test: `x402_test_<random>` on the local server
//! (`X402_TEST_POSTGRES_URL`, default `postgres://postgres@127.0.0.1:5432/test`), dropped
//! when the handle is (also when the test panicked), or at once with [`TestDb::drop_now`]
//! (a test of what happens when the database goes away).

use std::sync::atomic::{AtomicBool, Ordering};

use sqlx::{Connection, PgConnection};

fn admin_url() -> String {
    std::env::var("X402_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

async fn drop_database(name: &str) {
    if let Ok(mut c) = PgConnection::connect(&admin_url()).await {
        let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .execute(&mut c)
            .await;
    }
}

pub struct TestDb {
    name: String,
    dropped: AtomicBool,
}

impl TestDb {
    /// Creates the database; panics, naming the server, when Postgres is not there.
    pub async fn create() -> TestDb {
        let suffix = alloy::signers::local::PrivateKeySigner::random().to_bytes();
        let name = format!("x402_test_{}", alloy::hex::encode(&suffix[..6]));
        let mut c = PgConnection::connect(&admin_url())
            .await
            .unwrap_or_else(|e| {
                panic!("Postgres at {} is required for this test: {e}", admin_url())
            });
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut c)
            .await
            .unwrap();
        TestDb {
            name,
            dropped: AtomicBool::new(false),
        }
    }

    /// The database's URL (for `--database-url`).
    pub fn url(&self) -> String {
        let admin = admin_url();
        let base = admin
            .rsplit_once('/')
            .map(|(b, _)| b.to_string())
            .unwrap_or(admin);
        format!("{base}/{}", self.name)
    }

    /// A connection of the test's own to the database.
    pub async fn connect(&self) -> PgConnection {
        PgConnection::connect(&self.url())
            .await
            .expect("connect to the test database")
    }

    /// Drops the database now (connections are cut: `WITH (FORCE)`).
    pub async fn drop_now(&self) {
        self.dropped.store(true, Ordering::SeqCst);
        drop_database(&self.name).await;
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if self.dropped.load(Ordering::SeqCst) {
            return;
        }
        // Best effort, on a runtime of its own: the test's may be gone or blocked.
        let name = self.name.clone();
        let _ = std::thread::spawn(move || {
            if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                rt.block_on(drop_database(&name));
            }
        })
        .join();
    }
}

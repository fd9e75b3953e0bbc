//! A fresh Postgres database per test, `x402_test_<random>` on the local server
//! (X402_TEST_POSTGRES_URL, default postgres://postgres@127.0.0.1:5432/test), dropped after
//! (also when the test panics).

use sqlx::Connection;

fn admin_url() -> String {
    std::env::var("X402_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

pub struct TestDb {
    name: String,
    dropped: std::sync::atomic::AtomicBool,
}

impl TestDb {
    pub async fn create() -> TestDb {
        let name = format!(
            "x402_test_{}",
            alloy::primitives::hex::encode(rand::random::<[u8; 6]>())
        );
        let mut c = sqlx::PgConnection::connect(&admin_url())
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
            dropped: Default::default(),
        }
    }

    pub fn url(&self) -> String {
        let admin = admin_url();
        let base = admin
            .rsplit_once('/')
            .map(|(b, _)| b.to_string())
            .unwrap_or(admin);
        format!("{base}/{}", self.name)
    }

    pub async fn drop_now(&self) {
        self.dropped
            .store(true, std::sync::atomic::Ordering::SeqCst);
        if let Ok(mut c) = sqlx::PgConnection::connect(&admin_url()).await {
            let _ = sqlx::query(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ))
            .execute(&mut c)
            .await;
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if self.dropped.load(std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        let name = self.name.clone();
        // Best effort, also when the test panicked.
        let _ = std::thread::spawn(move || {
            if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                rt.block_on(
                    TestDb {
                        name: name.clone(),
                        dropped: Default::default(),
                    }
                    .drop_now_inner(),
                );
            }
        })
        .join();
    }
}

impl TestDb {
    async fn drop_now_inner(&self) {
        self.drop_now().await
    }
}

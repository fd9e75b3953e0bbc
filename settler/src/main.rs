use clap::Parser;
use tracing_subscriber::EnvFilter;
use x402_settler::config::{Cli, Command};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,tower_http=warn")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match cli.command {
        Some(Command::TokenKey { token_key_file }) => {
            println!("{}", x402_settler::token_key_json(&token_key_file)?);
            Ok(())
        }
        Some(Command::Unblock {
            payer,
            network,
            database_url,
            note,
        }) => {
            let out = x402_settler::unblock(&database_url, payer, network, &note).await?;
            println!("{out}");
            Ok(())
        }
        Some(Command::Serve) | None => x402_settler::serve(cli.serve).await,
    }
}

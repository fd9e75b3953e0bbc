use clap::Parser;
use tracing_subscriber::EnvFilter;
use x402_settler::config::{Cli, Command, LogFormat};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,tower_http=warn"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => logs
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        // One JSON object per line, the event's fields at the top level; a line logged
        // while serving a request has that request's span under "span" (`request_id`,
        // method, path), so a log pipeline can join it to Envoy's access log on
        // x-request-id.
        LogFormat::Json => logs
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .init(),
    }
    match cli.command {
        Some(Command::TokenKey {
            token_key_file,
            token_alg,
        }) => {
            println!(
                "{}",
                x402_settler::token_key_json(&token_key_file, token_alg.alg())?
            );
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

//! Prometheus metrics. The recorder is process-global; it is installed once.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub const TOKENS_MINTED: &str = "x402_tokens_minted_total";
pub const REJECTIONS: &str = "x402_token_rejections_total";
pub const SETTLEMENTS: &str = "x402_settlements_total";
pub const SETTLEMENTS_BY_STATE: &str = "x402_settlements";
pub const SETTLE_LATENCY: &str = "x402_settle_latency_seconds";
pub const TXS_SENT: &str = "x402_transactions_sent_total";
pub const RPC_ERRORS: &str = "x402_rpc_errors_total";
pub const SIGNER_BALANCE: &str = "x402_signer_balance_wei";
pub const FACILITATOR_REQUESTS: &str = "x402_facilitator_requests_total";
pub const TOKENS_REISSUED: &str = "x402_tokens_reissued_total";
/// The settlement queue per network (`ops_gauges`).
pub const UNSETTLED: &str = "x402_unsettled_payments";
pub const OLDEST_UNSETTLED_AGE: &str = "x402_oldest_unsettled_age_seconds";
/// Settled value per network, asset and route, in base units (`ops_gauges` says how it
/// saturates).
pub const REVENUE: &str = "x402_revenue_base_units_total";

/// Seconds spent in each phase of accepting a payment and minting its token (`phase`:
/// `check`, `lock`, `single_use`, `payer_block`, `chain_reads`, `total_cap`, `commit`,
/// `sign`): where a mint's milliseconds go.
pub const ACCEPT_PHASE: &str = "x402_accept_phase_seconds";

/// SQLite: accepted payments made durable per transaction (`store::group_commit`).
pub const SQLITE_GROUP_SIZE: &str = "x402_sqlite_group_commit_size";

/// Acceptances by what the payer-facts cache gave (`result`: `hit`, no balance read; `miss`,
/// read the node and filled; `bypass`, read the node: stale, off or being filled), and
/// `short`: a hit whose cached balance fell short, read again from the node.
pub const PAYER_FACTS: &str = "x402_payer_facts_total";
/// Payers whose facts are cached, per network.
pub const PAYER_FACTS_ENTRIES: &str = "x402_payer_facts_entries";

/// Records the time since `start` as phase `phase` of [`ACCEPT_PHASE`].
pub(crate) fn accept_phase(phase: &'static str, start: std::time::Instant) {
    metrics::histogram!(ACCEPT_PHASE, "phase" => phase).record(start.elapsed().as_secs_f64());
}

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the recorder (first call) and returns the handle that renders the text format.
pub fn handle() -> Option<PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Full(SETTLE_LATENCY.to_string()),
                    &[0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0],
                )
                .ok()?;
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            match metrics::set_global_recorder(recorder) {
                Ok(()) => {
                    describe();
                    Some(handle)
                }
                Err(_) => None,
            }
        })
        .clone()
}

fn describe() {
    metrics::describe_counter!(TOKENS_MINTED, "Access tokens minted");
    metrics::describe_counter!(REJECTIONS, "Token requests refused, by error code");
    metrics::describe_counter!(
        SETTLEMENTS,
        "Settlement state transitions, by state entered"
    );
    metrics::describe_gauge!(
        SETTLEMENTS_BY_STATE,
        "Stored payments, by current settlement state"
    );
    metrics::describe_histogram!(
        SETTLE_LATENCY,
        "Seconds from token minted to payment settled on chain"
    );
    metrics::describe_counter!(TXS_SENT, "Settlement transactions signed and broadcast");
    metrics::describe_counter!(RPC_ERRORS, "RPC errors seen by the settlement worker");
    metrics::describe_gauge!(
        SIGNER_BALANCE,
        "ETH balance of the settler wallet, by network and signer (wei)"
    );
    metrics::describe_counter!(
        TOKENS_REISSUED,
        "Tokens given again to the same payment posted again before broadcast"
    );
    metrics::describe_gauge!(
        UNSETTLED,
        "Payments stored and not yet final (pending or submitted), by network"
    );
    metrics::describe_gauge!(
        OLDEST_UNSETTLED_AGE,
        "Seconds the oldest unsettled payment has waited, by network (0: none waiting)"
    );
    metrics::describe_counter!(
        REVENUE,
        "Value settled to the recipients in the asset's base units, by network, asset and route (all settled payments in the database)"
    );
    metrics::describe_histogram!(
        ACCEPT_PHASE,
        "Seconds per phase of accepting a payment and minting its token (summary)"
    );
    metrics::describe_histogram!(
        SQLITE_GROUP_SIZE,
        "SQLite: accepted payments committed per transaction, one fsync each (summary)"
    );
    metrics::describe_counter!(
        FACILITATOR_REQUESTS,
        "Authenticated facilitator requests, by caller name and endpoint"
    );
    metrics::describe_counter!(
        PAYER_FACTS,
        "Acceptances by payer-facts cache result: hit (no balance read), miss (read and filled), bypass (read: stale, off or filling); short: a hit whose balance fell short and was read again"
    );
    metrics::describe_gauge!(
        PAYER_FACTS_ENTRIES,
        "Payers whose on-chain facts are cached, by network"
    );
}

pub fn probe() -> usize { x402_protocol::challenge::Reason::ALL.len() }

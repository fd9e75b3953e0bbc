//! The public signing API other crates' tests use: each scheme's signing function (taking plain
//! values and a local key) and the pieces they share (the token's EIP-712 domain, errors,
//! nonces, the `PAYMENT-SIGNATURE` header). They live in `crate::scheme`: the shared pieces
//! in `scheme::signing`, each scheme's typed data and body in its own module.

pub use crate::scheme::exact::{sign_authorization, x402_v2_payment};
pub use crate::scheme::permit::sign_permit;
pub use crate::scheme::signing::{random_nonce, x402_v2_header, SignError, TokenDomain, V2Error};

//! Exact conversion between human decimal amounts ("0.5" USDC) and integer base units.
//! Money never goes through a float.

use alloy_primitives::U256;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AmountError {
    #[error("amount is empty")]
    Empty,
    #[error("amount {0:?} is not a plain decimal number (digits with at most one '.')")]
    Syntax(String),
    #[error("amount {amount:?} has more fractional digits than the asset's {decimals} decimals")]
    TooPrecise { amount: String, decimals: u8 },
    #[error("amount {0:?} is too large")]
    Overflow(String),
}

/// Parses a non-negative decimal string in human units into base units:
/// `parse_decimal("0.5", 6) == 500_000`. Rejects signs, exponents, spaces and any digit
/// beyond the asset's precision (rounding would silently change a price).
pub fn parse_decimal(text: &str, decimals: u8) -> Result<U256, AmountError> {
    if text.is_empty() {
        return Err(AmountError::Empty);
    }
    let (int_part, frac_part) = match text.split_once('.') {
        Some((i, f)) => (i, f),
        None => (text, ""),
    };
    let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if (int_part.is_empty() && frac_part.is_empty())
        || !all_digits(int_part)
        || !all_digits(frac_part)
        || (text.contains('.') && (int_part.is_empty() || frac_part.is_empty()))
    {
        return Err(AmountError::Syntax(text.to_string()));
    }
    let frac_trimmed = frac_part.trim_end_matches('0');
    if frac_trimmed.len() > decimals as usize {
        return Err(AmountError::TooPrecise {
            amount: text.to_string(),
            decimals,
        });
    }
    let mut digits = String::with_capacity(int_part.len() + decimals as usize);
    digits.push_str(int_part);
    digits.push_str(frac_trimmed);
    for _ in frac_trimmed.len()..decimals as usize {
        digits.push('0');
    }
    let digits = digits.trim_start_matches('0');
    if digits.is_empty() {
        return Ok(U256::ZERO);
    }
    U256::from_str_radix(digits, 10).map_err(|_| AmountError::Overflow(text.to_string()))
}

/// Formats base units as the shortest exact decimal in human units: 500000 @6 -> "0.5".
pub fn format_base_units(value: U256, decimals: u8) -> String {
    let digits = value.to_string();
    let d = decimals as usize;
    let (int_part, frac_part) = if digits.len() > d {
        let (i, f) = digits.split_at(digits.len() - d);
        (i.to_string(), f.to_string())
    } else {
        (
            "0".to_string(),
            format!("{}{}", "0".repeat(d - digits.len()), digits),
        )
    };
    let frac = frac_part.trim_end_matches('0');
    if frac.is_empty() {
        int_part
    } else {
        format!("{int_part}.{frac}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_exact_decimals() {
        assert_eq!(parse_decimal("0.5", 6).unwrap(), U256::from(500_000u64));
        assert_eq!(parse_decimal("1", 6).unwrap(), U256::from(1_000_000u64));
        assert_eq!(parse_decimal("0.000001", 6).unwrap(), U256::from(1u64));
        assert_eq!(
            parse_decimal("12.340000", 6).unwrap(),
            U256::from(12_340_000u64)
        );
        assert_eq!(parse_decimal("0", 6).unwrap(), U256::ZERO);
        assert_eq!(parse_decimal("007", 0).unwrap(), U256::from(7u64));
        // 0.1 + 0.2 style float traps do not exist here.
        assert_eq!(
            parse_decimal("0.3", 18).unwrap(),
            U256::from(300_000_000_000_000_000u64)
        );
    }

    #[test]
    fn rejects_inexact_or_malformed() {
        assert!(matches!(
            parse_decimal("0.0000001", 6),
            Err(AmountError::TooPrecise { .. })
        ));
        for bad in [
            "", ".5", "5.", "-1", "+1", "1e3", "1,5", " 1", "0x10", "1.2.3", "NaN",
        ] {
            assert!(parse_decimal(bad, 6).is_err(), "{bad:?} must be rejected");
        }
        let huge = "1".repeat(90);
        assert!(matches!(
            parse_decimal(&huge, 6),
            Err(AmountError::Overflow(_))
        ));
    }

    #[test]
    fn formats_round_trip() {
        for (text, d) in [
            ("0.5", 6),
            ("1", 6),
            ("0.000001", 6),
            ("123.45", 2),
            ("10", 0),
        ] {
            assert_eq!(format_base_units(parse_decimal(text, d).unwrap(), d), text);
        }
        assert_eq!(format_base_units(U256::ZERO, 6), "0");
    }
}

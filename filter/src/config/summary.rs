//! A one-line account of what a valid configuration holds, for `x402-filter check-config`
//! (so a config that parses but prices nothing you meant is visible at a glance).

use super::FilterConfig;

impl FilterConfig {
    /// E.g. `3 routes (api, premium, data), 2 token keys, settler cluster "x402_settler"`.
    pub fn summary(&self) -> String {
        let names: Vec<&str> = (0..self.routes.len())
            .filter_map(|i| self.routes.get(i).map(|r| r.name.as_str()))
            .collect();
        let plural =
            |n: usize, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
        format!(
            "{} ({}), {}, settler cluster {:?}",
            plural(names.len(), "route", "routes"),
            names.join(", "),
            plural(self.keys.len(), "token key", "token keys"),
            self.settler.cluster,
        )
    }
}

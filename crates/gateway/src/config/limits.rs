//! The per-tenant limits of `limits:` (requests and tokens per minute, a cloud spend budget per period),
//! where they are counted (`redis:`, or this process), and what a request gets when the shared store
//! cannot be reached (`fail:`). Checked here with the key of every value; enforced by [`crate::limits`].

use std::collections::BTreeMap;
use std::time::Duration;

use sluice_config::{ConfigError, Locator};

use super::raw::{RawBudget, RawLimits, RawRedis, RawTenantLimits};
use crate::limits::{
    Budget, DEFAULT_RESERVE_OUTPUT_TOKENS, Fail, Period, StoreConfig, TenantLimits, TenantLimitsConfig,
};
/// How long a call to the shared store may take before `fail:` applies, unless configured.
pub const DEFAULT_STORE_TIMEOUT_MS: u64 = 250;
pub const DEFAULT_KEY_PREFIX: &str = "sluice";

/// Checks the tenant limits; `tenants` are those API keys map to (a tenant named in `limits.tenants`
/// that no key maps to is a mistake).
pub fn tenant_limits(
    at: &Locator<'_>,
    raw: RawLimits,
    tenants: &[String],
    allow_unauthenticated: bool,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<TenantLimitsConfig, ConfigError> {
    let default = raw.default.map(|d| one(at, "limits.default", d)).transpose()?;
    let mut by_tenant = BTreeMap::new();
    for (name, t) in raw.tenants.unwrap_or_default() {
        let key = format!("limits.tenants.{name}");
        let known = tenants.contains(&name) || (allow_unauthenticated && name == crate::auth::ANONYMOUS);
        if !known {
            return Err(at.error(
                &key,
                format!("no API key maps to the tenant {name:?}: its limits would never apply"),
            ));
        }
        by_tenant.insert(name, one(at, &key, t)?);
    }
    let reserve_output_tokens = raw.reserve_output_tokens.unwrap_or(DEFAULT_RESERVE_OUTPUT_TOKENS);
    if !(1..=1_000_000).contains(&reserve_output_tokens) {
        return Err(at.error("limits.reserve_output_tokens", "must be between 1 and 1000000"));
    }
    // A request without max_tokens reserves this many answer tokens: a tenant whose minute holds fewer
    // could send no such request at all.
    for (key, l) in configured(default.as_ref(), &by_tenant) {
        if let Some(tpm) = l.tokens_per_minute
            && tpm <= u64::from(reserve_output_tokens)
        {
            return Err(at.error(
                &format!("{key}.tokens_per_minute"),
                format!(
                    "{tpm} is not above reserve_output_tokens ({reserve_output_tokens}), which every request without max_tokens reserves: raise it, or lower limits.reserve_output_tokens"
                ),
            ));
        }
    }
    let store = match raw.redis {
        None => StoreConfig::Memory,
        Some(r) => redis(at, r, env)?,
    };
    let fail = match raw.fail.as_deref() {
        None | Some("closed") => Fail::Closed,
        Some("local") => Fail::Local,
        Some(other) => {
            return Err(at.error(
                "limits.fail",
                format!("{other:?}: write closed (refuse cloud-bound requests that need a budget) or local"),
            ));
        }
    };
    if raw.fail.is_some() && store == StoreConfig::Memory {
        return Err(at.error(
            "limits.fail",
            "applies when limits are kept in Redis (limits.redis); in memory they are always reachable",
        ));
    }
    Ok(TenantLimitsConfig {
        default,
        tenants: by_tenant,
        reserve_output_tokens,
        store,
        fail,
    })
}

/// Every configured set of limits with its key.
fn configured<'a>(
    default: Option<&'a TenantLimits>,
    tenants: &'a BTreeMap<String, TenantLimits>,
) -> impl Iterator<Item = (String, &'a TenantLimits)> {
    let default = default.into_iter().map(|l| ("limits.default".to_owned(), l));
    default.chain(tenants.iter().map(|(t, l)| (format!("limits.tenants.{t}"), l)))
}

fn one(at: &Locator<'_>, key: &str, raw: RawTenantLimits) -> Result<TenantLimits, ConfigError> {
    let positive = |f: &str, v: Option<u64>| match v {
        Some(0) => Err(at.error(
            &format!("{key}.{f}"),
            "must be at least 1 (leave it out for no limit)",
        )),
        v => Ok(v),
    };
    let requests_per_minute = positive("requests_per_minute", raw.requests_per_minute)?;
    let tokens_per_minute = positive("tokens_per_minute", raw.tokens_per_minute)?;
    let budget = raw
        .budget
        .map(|b| budget(at, &format!("{key}.budget"), b))
        .transpose()?;
    if requests_per_minute.is_none() && tokens_per_minute.is_none() && budget.is_none() {
        return Err(at.error(
            key,
            "give requests_per_minute, tokens_per_minute or budget (or leave the tenant out)",
        ));
    }
    Ok(TenantLimits {
        requests_per_minute,
        tokens_per_minute,
        budget,
    })
}

fn budget(at: &Locator<'_>, key: &str, raw: RawBudget) -> Result<Budget, ConfigError> {
    let usd = raw
        .usd
        .ok_or_else(|| at.error(key, "`usd` is required: the most to spend per period"))?;
    if !(0.0..=1e9).contains(&usd) {
        return Err(at.error(&format!("{key}.usd"), "must be between 0 and 1000000000"));
    }
    let period = match raw.period.as_deref() {
        None | Some("day") => Period::Day,
        Some("week") => Period::Week,
        Some("month") => Period::Month,
        Some(p) => {
            return Err(at.error(
                &format!("{key}.period"),
                format!("{p:?}: write day, week (from Monday) or month (calendar)"),
            ));
        }
    };
    let utc_offset_seconds = match raw.time_zone.as_deref() {
        None => 0,
        Some(z) => utc_offset(z).ok_or_else(|| {
            at.error(
                &format!("{key}.time_zone"),
                format!("{z:?}: write UTC or an offset such as +01:00 or -05:30 (named zones are not read)"),
            )
        })?,
    };
    Ok(Budget {
        pico: crate::cost::pico(usd),
        period,
        utc_offset_seconds,
        include_local: raw.include_local.unwrap_or(false),
    })
}

/// `UTC`, `Z`, or `±HH:MM` (also `±HHMM`, `±HH`), at most 14 hours.
pub fn utc_offset(z: &str) -> Option<i32> {
    let z = z.trim();
    if z.eq_ignore_ascii_case("utc") || z == "Z" {
        return Some(0);
    }
    let z = z.strip_prefix("UTC").unwrap_or(z);
    let (sign, rest) = match z.as_bytes().first()? {
        b'+' => (1, &z[1..]),
        b'-' => (-1, &z[1..]),
        _ => return None,
    };
    let digits: String = rest.chars().filter(|c| *c != ':').collect();
    if !digits.bytes().all(|b| b.is_ascii_digit()) || !matches!(digits.len(), 2 | 4) {
        return None;
    }
    let hours: i32 = digits[..2].parse().ok()?;
    let minutes: i32 = if digits.len() == 4 {
        digits[2..].parse().ok()?
    } else {
        0
    };
    (hours <= 14 && minutes < 60).then_some(sign * (hours * 3600 + minutes * 60))
}

fn redis(
    at: &Locator<'_>,
    r: RawRedis,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<StoreConfig, ConfigError> {
    let inline = r.url.is_some();
    let url = match (r.url, r.url_env) {
        (Some(u), None) => u,
        (None, Some(var)) => env(&var).filter(|v| !v.is_empty()).ok_or_else(|| {
            at.error(
                "limits.redis.url_env",
                format!("the environment variable {var} is not set"),
            )
        })?,
        (Some(_), Some(_)) => return Err(at.error("limits.redis", "give url or url_env, not both")),
        (None, None) => return Err(at.error("limits.redis", "`url` or `url_env` is required")),
    };
    let url = match (r.tls.unwrap_or(false), url.strip_prefix("redis://")) {
        (true, Some(rest)) => format!("rediss://{rest}"),
        (false, _) if url.starts_with("rediss://") => {
            return Err(at.error(
                "limits.redis.tls",
                "the URL is rediss:// (TLS) but tls is not set: set tls: true, or use redis://",
            ));
        }
        _ => url,
    };
    // The URL may hold a password: it is never repeated in an error. One from the environment is read
    // when the gateway starts (`sluice policy check` has no production secrets).
    if inline && let Err(e) = redis::Client::open(url.as_str()) {
        return Err(at.error(
            "limits.redis.url",
            format!("is not a Redis URL ({:?}): write redis://host:6379/0", e.kind()),
        ));
    }
    let key_prefix = r.key_prefix.unwrap_or_else(|| DEFAULT_KEY_PREFIX.to_owned());
    if key_prefix.is_empty()
        || key_prefix.len() > 64
        || key_prefix.contains(['{', '}'])
        || key_prefix.chars().any(char::is_whitespace)
    {
        return Err(at.error(
            "limits.redis.key_prefix",
            "use 1 to 64 characters without spaces or braces",
        ));
    }
    let ms = r.timeout_ms.unwrap_or(DEFAULT_STORE_TIMEOUT_MS);
    if !(1..=10_000).contains(&ms) {
        return Err(at.error("limits.redis.timeout_ms", "must be between 1 and 10000"));
    }
    Ok(StoreConfig::Redis {
        url,
        key_prefix,
        timeout: Duration::from_millis(ms),
    })
}

#[cfg(test)]
mod tests {
    use super::utc_offset;

    #[test]
    fn offsets_are_read_in_their_usual_spellings() {
        assert_eq!(utc_offset("UTC"), Some(0));
        assert_eq!(utc_offset("+01:00"), Some(3600));
        assert_eq!(utc_offset("-05:30"), Some(-19_800));
        assert_eq!(utc_offset("UTC+0530"), Some(19_800));
        assert_eq!(utc_offset("+14"), Some(50_400));
        for bad in ["Europe/Paris", "+1", "+15:00", "+01:60", "01:00", ""] {
            assert_eq!(utc_offset(bad), None, "{bad}");
        }
    }
}

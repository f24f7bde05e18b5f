//! The `dns` fault kind (README "DNS"): what a DNS rule answers instead of
//! the truth, validated once when the rule loads.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use super::{FaultSpec, FieldError, FieldPath};

/// The TTL a DNS fault's answer carries when the rule gives no `ttl`:
/// short, so a client's cache does not keep a fault long past its rule.
pub const DEFAULT_DNS_TTL: Duration = Duration::from_secs(5);
/// The longest `ttl` a DNS fault may give: a cached fault outlives its
/// rule by at most this long.
pub const MAX_DNS_TTL: Duration = Duration::from_secs(300);
/// The most addresses an `addresses` answer may carry (they must fit a
/// 512-byte UDP answer with room to spare).
pub const MAX_DNS_ADDRESSES: usize = 16;

/// What a DNS rule answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DnsAnswer {
    /// The name does not exist (`NXDOMAIN`).
    NxDomain,
    /// The resolver failed (`SERVFAIL`).
    ServFail,
    /// The name exists with no records of the type asked (`NOERROR`, no
    /// answer): what `dynamodb.us-east-1.amazonaws.com` answered in October 2025.
    NoData,
    /// The resolver will not answer (`REFUSED`).
    Refused,
    /// No answer at all: the client's own timeout decides.
    Timeout,
    /// A wrong answer: these addresses.
    Addresses(Arc<[IpAddr]>),
}

impl DnsAnswer {
    /// As written in `answer`, and the `answer` label of
    /// `faultline_dns_queries_total`.
    pub fn name(&self) -> &'static str {
        match self {
            DnsAnswer::NxDomain => "nxdomain",
            DnsAnswer::ServFail => "servfail",
            DnsAnswer::NoData => "nodata",
            DnsAnswer::Refused => "refused",
            DnsAnswer::Timeout => "timeout",
            DnsAnswer::Addresses(_) => "addresses",
        }
    }
}

/// A validated `dns` fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsFault {
    pub answer: DnsAnswer,
    /// The TTL of the answer's records, and of the SOA that lets a client
    /// cache a negative answer (RFC 2308) for that long and no longer.
    pub ttl: Duration,
}

impl DnsFault {
    /// The TTL as DNS writes it: whole seconds.
    pub fn ttl_secs(&self) -> u32 {
        u32::try_from(self.ttl.as_secs()).unwrap_or(u32::MAX)
    }
}

impl FaultSpec {
    pub(super) fn dns(&self, at: &FieldPath, errors: &mut Vec<FieldError>) -> DnsFault {
        let ttl = super::fault_duration(&self.ttl, at, "ttl", errors).unwrap_or(DEFAULT_DNS_TTL);
        if ttl > MAX_DNS_TTL {
            errors.push(FieldError::new(
                at.key("ttl"),
                format!(
                    "ttl {:?} is longer than the {}s a DNS fault's answer may be cached",
                    self.ttl.as_deref().unwrap_or_default(),
                    MAX_DNS_TTL.as_secs()
                ),
            ));
        }
        let expected = "nxdomain, servfail, nodata, refused, timeout, addresses";
        let answer = match self.answer.as_deref() {
            Some("nxdomain") => DnsAnswer::NxDomain,
            Some("servfail") => DnsAnswer::ServFail,
            Some("nodata") => DnsAnswer::NoData,
            Some("refused") => DnsAnswer::Refused,
            Some("timeout") => DnsAnswer::Timeout,
            Some("addresses") => {
                let mut addresses = Vec::new();
                for (i, text) in self.addresses.iter().flatten().enumerate() {
                    match text.parse::<IpAddr>() {
                        Ok(ip) => addresses.push(ip),
                        Err(_) => errors.push(FieldError::new(
                            at.key("addresses").index(i),
                            format!("{text:?} is not an IPv4 or IPv6 address"),
                        )),
                    }
                }
                if self.addresses.as_ref().is_none_or(Vec::is_empty) {
                    errors.push(FieldError::new(
                        at.key("answer"),
                        "answer = \"addresses\" needs `addresses` (at least one IP address)",
                    ));
                } else if addresses.len() > MAX_DNS_ADDRESSES {
                    errors.push(FieldError::new(
                        at.key("addresses"),
                        format!("at most {MAX_DNS_ADDRESSES} addresses may be given"),
                    ));
                }
                DnsAnswer::Addresses(addresses.into())
            }
            Some(other) => {
                errors.push(FieldError::new(
                    at.key("answer"),
                    format!("unknown answer {other:?}; expected one of {expected}"),
                ));
                DnsAnswer::ServFail
            }
            None => {
                errors.push(FieldError::new(
                    at.key("kind"),
                    format!("kind = \"dns\" needs `answer` ({expected})"),
                ));
                DnsAnswer::ServFail
            }
        };
        if self.addresses.is_some() && !matches!(answer, DnsAnswer::Addresses(_)) {
            errors.push(FieldError::new(
                at.key("addresses"),
                "`addresses` goes with answer = \"addresses\"",
            ));
        }
        DnsFault { answer, ttl }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{BodySource, Fault};
    use super::*;

    fn validate(text: &str) -> Result<Fault, Vec<String>> {
        let spec: FaultSpec = toml::from_str(text).map_err(|e| vec![e.to_string()])?;
        spec.validate(BodySource::inline(), &FieldPath::root())
            .map_err(|errors| errors.iter().map(ToString::to_string).collect())
    }

    #[test]
    fn answers_and_their_ttl() {
        let Ok(Fault::Dns(fault)) = validate("kind = \"dns\"\nanswer = \"nodata\"") else {
            panic!("not a dns fault");
        };
        assert_eq!(fault.answer, DnsAnswer::NoData);
        assert_eq!(fault.ttl, DEFAULT_DNS_TTL);
        let Ok(Fault::Dns(fault)) = validate(
            "kind = \"dns\"\nanswer = \"addresses\"\naddresses = [\"203.0.113.9\", \"::1\"]\nttl = \"2s\"",
        ) else {
            panic!("not a dns fault");
        };
        assert_eq!(fault.answer.name(), "addresses");
        assert_eq!(fault.ttl_secs(), 2);
    }

    #[test]
    fn problems_are_reported_at_their_field() {
        assert_eq!(
            validate("kind = \"dns\"\nanswer = \"lost\"").unwrap_err(),
            ["answer: unknown answer \"lost\"; expected one of nxdomain, servfail, nodata, refused, timeout, addresses"]
        );
        assert_eq!(
            validate("kind = \"dns\"\nanswer = \"addresses\"\naddresses = [\"example.com\"]")
                .unwrap_err(),
            ["addresses[0]: \"example.com\" is not an IPv4 or IPv6 address"]
        );
        assert_eq!(
            validate("kind = \"dns\"\nanswer = \"nodata\"\nttl = \"1h\"").unwrap_err(),
            ["ttl: ttl \"1h\" is longer than the 300s a DNS fault's answer may be cached"]
        );
        assert_eq!(
            validate("kind = \"dns\"\nanswer = \"nxdomain\"\naddresses = [\"::1\"]").unwrap_err(),
            ["addresses: `addresses` goes with answer = \"addresses\""]
        );
        assert!(validate("kind = \"dns\"").unwrap_err()[0]
            .starts_with("kind: kind = \"dns\" needs `answer`"));
        assert!(
            validate("kind = \"error\"\nstatus = 500\nanswer = \"nodata\"").unwrap_err()[0]
                .starts_with("answer: `answer` does not apply to kind = \"error\"")
        );
    }
}

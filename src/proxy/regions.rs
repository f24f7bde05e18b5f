//! The bound on the regions forward traffic's series are labelled with,
//! named by a request's host or its SigV4 signature (README "Forward
//! proxy"), owned here so the three families it labels
//! (`faultline_requests_total`, `faultline_request_duration_seconds`,
//! `faultline_faults_injected_total`) cannot grow without end.
//!
//! faultline does not verify a signature, a client writes its credential
//! scope as it likes, and a forward client may name any host (`CONNECT
//! x.zz-qaa-1.amazonaws.com:443`): were every region-shaped name taken, a
//! client varying it would make new series, kept for the process's life,
//! with each request. A signed region labels a series when it is:
//! - an AWS region ([`crate::aws::AWS_REGIONS`]), or one a configured
//!   upstream's or destination's `region` label names: the common case,
//!   decided by a search in fixed lists, no lock, no allocation;
//! - else one of the first [`MAX_OTHER_REGIONS`] other names seen (a region
//!   AWS opened after faultline's list was written, an emulator's own):
//!   each claims a slot for good, found after that by atomic loads alone;
//! - else it is counted under [`RegionName::OTHER`] (`other`).
//!
//! So clients add at most `AWS_REGIONS.len() + MAX_OTHER_REGIONS + 1`
//! region values besides the configured ones.

use std::sync::OnceLock;

use crate::aws::RegionName;

/// How many signed region names outside the known lists are kept as they
/// are, first seen first; README "Forward proxy" documents it.
pub(crate) const MAX_OTHER_REGIONS: usize = 8;

/// The signed regions forward traffic may be counted under; one per proxy.
pub(super) struct SignedRegions {
    /// The region-shaped `region` labels of the configured upstreams and
    /// destinations (a handful): fixed when the proxy is built.
    configured: Box<[RegionName]>,
    /// The other names kept, each slot claimed once and never changed: a
    /// `OnceLock` rather than a lock-held set, as a name kept before is
    /// then found by atomic loads alone.
    others: [OnceLock<RegionName>; MAX_OTHER_REGIONS],
}

impl SignedRegions {
    /// `region_labels`: the `region` labels of the configured upstreams
    /// and destinations; those not shaped like a region are left out, as
    /// no signature is taken for one.
    pub(super) fn new<'a>(region_labels: impl IntoIterator<Item = &'a str>) -> Self {
        let mut configured = Vec::new();
        for region in region_labels.into_iter().filter_map(RegionName::new) {
            if !configured.contains(&region) {
                configured.push(region);
            }
        }
        Self {
            configured: configured.into_boxed_slice(),
            others: std::array::from_fn(|_| OnceLock::new()),
        }
    }

    /// The name a request signed for `region` is counted under: `region`
    /// itself while the bound allows it, else [`RegionName::OTHER`].
    pub(super) fn bound(&self, region: RegionName) -> RegionName {
        if crate::aws::is_aws_region(region.as_str()) || self.configured.contains(&region) {
            return region;
        }
        for slot in &self.others {
            // An empty slot is claimed by the first name to reach it; a
            // concurrent claim of the same slot waits for the winner only
            // then, at most MAX_OTHER_REGIONS times in the process's life.
            if *slot.get_or_init(|| region) == region {
                return region;
            }
        }
        RegionName::OTHER
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn region(name: &str) -> RegionName {
        RegionName::new(name).unwrap()
    }

    #[test]
    fn known_and_configured_regions_always_count_others_up_to_the_bound() {
        let regions = SignedRegions::new(["xx-lab-1", "local", "xx-lab-1"]);
        assert_eq!(regions.configured.len(), 1);
        let bogus: Vec<RegionName> = (0..MAX_OTHER_REGIONS + 5)
            .map(|i| region(&format!("zz-q{}-1", char::from(b'a' + i as u8))))
            .collect();
        let counted: Vec<RegionName> = bogus.iter().map(|r| regions.bound(*r)).collect();
        assert_eq!(&counted[..MAX_OTHER_REGIONS], &bogus[..MAX_OTHER_REGIONS]);
        assert!(counted[MAX_OTHER_REGIONS..]
            .iter()
            .all(|r| *r == RegionName::OTHER));
        // A name kept stays kept; the lists are never crowded out.
        assert_eq!(regions.bound(bogus[0]), bogus[0]);
        assert_eq!(regions.bound(region("eu-west-1")), region("eu-west-1"));
        assert_eq!(regions.bound(region("XX-LAB-1")), region("xx-lab-1"));
    }
}

//! Cloud endpoints' host names: the AWS service and region a host name
//! says (`dynamodb.us-east-1.amazonaws.com` → `dynamodb`, `us-east-1`), for
//! naming forward traffic (SPEC §8). Pure: no lookup, no table of services;
//! a host that does not follow AWS's naming gives `None`.
//!
//! The forms read, after the partition's suffix (`amazonaws.com`,
//! `amazonaws.com.cn`, `api.aws`) is removed:
//! - `{service}.{region}`, `{service}-fips.{region}`,
//!   `{service}.dualstack.{region}`, and anything before them
//!   (`{bucket}.s3.{region}`, `{id}.execute-api.{region}`,
//!   `{account}.dkr.ecr.{region}`): the service is the label just before the
//!   region, `dualstack` skipped and `-fips` removed;
//! - S3's legacy dashed forms: `s3-{region}`, `{bucket}.s3-{region}`,
//!   `s3-website-{region}`, `s3-fips-{region}`, and `s3-external-1`
//!   (us-east-1); `s3-website`, `s3-accesspoint` and `s3-control` are S3;
//! - global endpoints with no region label (`s3.amazonaws.com`,
//!   `{bucket}.s3.amazonaws.com`, `sts`, `iam`, `route53`, `cloudfront`,
//!   `organizations`): signed for `us-east-1`, so that is their region.

/// The service and region an AWS host name names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AwsEndpoint {
    /// The endpoint prefix (`dynamodb`, `s3`, `lambda`), lowercase.
    pub service: String,
    /// `us-east-1`, `cn-north-1`, `us-gov-west-1`…, lowercase.
    pub region: String,
}

/// The partitions' DNS suffixes, longest first.
const SUFFIXES: [&str; 3] = [".amazonaws.com.cn", ".amazonaws.com", ".api.aws"];

/// Global services, signed in us-east-1, whose hosts have no region.
const GLOBAL: [&str; 6] = ["s3", "sts", "iam", "route53", "cloudfront", "organizations"];

/// The region global endpoints are signed for.
const GLOBAL_REGION: &str = "us-east-1";

/// The service and region `host` (port removed) names, if it is an AWS
/// endpoint's name.
pub fn aws_endpoint(host: &str) -> Option<AwsEndpoint> {
    let host = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
    let rest = SUFFIXES
        .iter()
        .find_map(|suffix| host.strip_suffix(suffix))?;
    let labels: Vec<&str> = rest.split('.').collect();
    if labels.iter().any(|label| label.is_empty()) {
        return None;
    }
    let found = |service: &str, region: &str| {
        Some(AwsEndpoint {
            service: service.to_owned(),
            region: region.to_owned(),
        })
    };
    // The rightmost label that is a region; what stands before it names
    // the service.
    if let Some(at) = labels.iter().rposition(|label| is_region(label)) {
        let mut before = labels[..at].iter().rev().filter(|l| **l != "dualstack");
        let service = before.next()?;
        let service = service.strip_suffix("-fips").unwrap_or(service);
        let service = if service.starts_with("s3-") {
            "s3"
        } else {
            service
        };
        return found(service, labels[at]);
    }
    // S3's legacy dashed forms carry the region in the same label.
    let last = labels.last()?;
    if let Some(dashed) = last.strip_prefix("s3-") {
        if dashed == "external-1" {
            return found("s3", GLOBAL_REGION);
        }
        let region = ["website-", "fips-"]
            .iter()
            .find_map(|kind| dashed.strip_prefix(kind))
            .unwrap_or(dashed);
        return is_region(region).then(|| found("s3", region)).flatten();
    }
    // China has no global endpoints; the others are signed in us-east-1.
    if host.ends_with(".cn") {
        return None;
    }
    GLOBAL
        .contains(last)
        .then(|| found(last, GLOBAL_REGION))
        .flatten()
}

/// `us-east-1`, `ap-southeast-3`, `us-gov-west-1`, `us-isob-east-1`: two
/// letters, one or more words, a number.
fn is_region(label: &str) -> bool {
    let parts: Vec<&str> = label.split('-').collect();
    parts.len() >= 3
        && parts[0].len() == 2
        && parts[0].bytes().all(|b| b.is_ascii_lowercase())
        && parts[1..parts.len() - 1]
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_lowercase()))
        && parts[parts.len() - 1]
            .parse::<u8>()
            .is_ok_and(|n| n > 0 && !parts[parts.len() - 1].starts_with('0'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn named(host: &str) -> Option<(String, String)> {
        aws_endpoint(host).map(|e| (e.service, e.region))
    }

    fn is(host: &str, service: &str, region: &str) {
        assert_eq!(
            named(host),
            Some((service.to_owned(), region.to_owned())),
            "{host}"
        );
    }

    #[test]
    fn regional_endpoints_name_their_service_and_region() {
        is("dynamodb.us-east-1.amazonaws.com", "dynamodb", "us-east-1");
        is("lambda.eu-west-2.amazonaws.com", "lambda", "eu-west-2");
        is("sqs.ap-southeast-3.amazonaws.com", "sqs", "ap-southeast-3");
        is("Lambda.US-West-2.AmazonAWS.com.", "lambda", "us-west-2");
        is("sts.us-gov-west-1.amazonaws.com", "sts", "us-gov-west-1");
        is(
            "dynamodb.cn-north-1.amazonaws.com.cn",
            "dynamodb",
            "cn-north-1",
        );
        is("dynamodb.us-east-1.api.aws", "dynamodb", "us-east-1");
    }

    #[test]
    fn fips_and_dualstack_forms_name_the_plain_service() {
        is(
            "dynamodb-fips.us-east-1.amazonaws.com",
            "dynamodb",
            "us-east-1",
        );
        is("ec2.dualstack.eu-west-1.amazonaws.com", "ec2", "eu-west-1");
        is(
            "s3-fips.dualstack.us-east-2.amazonaws.com",
            "s3",
            "us-east-2",
        );
        is("s3.dualstack.us-west-2.amazonaws.com", "s3", "us-west-2");
    }

    #[test]
    fn s3_buckets_and_legacy_forms_are_s3_in_their_region() {
        is("my-bucket.s3.us-west-2.amazonaws.com", "s3", "us-west-2");
        is("a.b.c.s3.eu-central-1.amazonaws.com", "s3", "eu-central-1");
        is(
            "my-bucket.s3.dualstack.us-east-1.amazonaws.com",
            "s3",
            "us-east-1",
        );
        is("s3-us-west-2.amazonaws.com", "s3", "us-west-2");
        is("my-bucket.s3-eu-west-1.amazonaws.com", "s3", "eu-west-1");
        is("s3-website-us-east-1.amazonaws.com", "s3", "us-east-1");
        is(
            "bucket.s3-website.eu-west-3.amazonaws.com",
            "s3",
            "eu-west-3",
        );
        is("s3-accesspoint.us-east-1.amazonaws.com", "s3", "us-east-1");
        is("s3-external-1.amazonaws.com", "s3", "us-east-1");
        is("s3.amazonaws.com", "s3", "us-east-1");
        is("my-bucket.s3.amazonaws.com", "s3", "us-east-1");
    }

    #[test]
    fn other_prefixed_endpoints_name_the_label_before_the_region() {
        is(
            "abc123.execute-api.us-east-1.amazonaws.com",
            "execute-api",
            "us-east-1",
        );
        is(
            "123456789012.dkr.ecr.eu-west-1.amazonaws.com",
            "ecr",
            "eu-west-1",
        );
    }

    #[test]
    fn global_endpoints_are_us_east_1() {
        is("sts.amazonaws.com", "sts", "us-east-1");
        is("iam.amazonaws.com", "iam", "us-east-1");
    }

    #[test]
    fn other_hosts_name_nothing() {
        for host in [
            "example.com",
            "amazonaws.com",
            "us-east-1.amazonaws.com",
            "dynamodb.amazonaws.com",
            "foo.us-east-1.example.com",
            "dynamodb..us-east-1.amazonaws.com",
            "s3-nowhere.amazonaws.com",
            "iam.amazonaws.com.cn",
            "dynamodb.us-east-01.amazonaws.com",
            "127.0.0.1",
            "",
        ] {
            assert_eq!(named(host), None, "{host}");
        }
    }

    #[test]
    fn regions_look_like_regions() {
        assert!(is_region("us-east-1"));
        assert!(is_region("us-isob-east-1"));
        assert!(!is_region("us-east"));
        assert!(!is_region("dualstack"));
        assert!(!is_region("external-1"));
        assert!(!is_region("us-east-0"));
    }
}

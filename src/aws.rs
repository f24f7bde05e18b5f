//! AWS's wire vocabulary: naming a request the way AWS does (its service,
//! region and operation) and telling which protocol its errors must speak.
//! Pure functions over a request's parts, borrowing from them; nothing here
//! allocates.
//!
//! - Service and region: the SigV4 credential scope (`Authorization`
//!   header, or `X-Amz-Credential` in a presigned URL's query) when the
//!   request is signed, else the endpoint's host name ([`parse_host`]). The
//!   scope names the *signing* name (`s3`, `dynamodb`, `monitoring`…), the
//!   host the endpoint prefix; for nearly every service they are the same.
//! - Operation: `X-Amz-Target` (the JSON protocols), the Smithy RPCv2 path,
//!   the query's (or a form body's, [`form_action`]) `Action`, or for
//!   Lambda and S3 the REST method and path ([`lambda_operation`],
//!   [`s3_operation`]).
//! - Protocol ([`Protocol::of`]): what an injected error must look like so
//!   that every SDK parses it (botocore's `parsers.py` is the reference).

use http::{HeaderMap, Method};

/// What a host name says: `{service}.{region}.amazonaws.com`,
/// `{bucket}.s3.{region}.amazonaws.com`, `s3.{region}…`, the `fips` and
/// `dualstack` forms, `*.amazonaws.com.cn`, `*.amazonaws.eu` (the European
/// Sovereign Cloud) and `*.api.aws`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Endpoint<'a> {
    /// The endpoint prefix, without `-fips` (`s3` for every S3 form).
    pub service: &'a str,
    /// `None` for a global endpoint (`sts.amazonaws.com`, `s3.amazonaws.com`).
    pub region: Option<&'a str>,
    /// S3's virtual-hosted bucket (`{bucket}.s3…`), dots included.
    pub bucket: Option<&'a str>,
}

/// The suffixes of AWS endpoints, longest first.
const SUFFIXES: [&str; 4] = [
    ".amazonaws.com.cn",
    ".amazonaws.com",
    ".amazonaws.eu",
    ".api.aws",
];

/// The AWS endpoint a host name (a port allowed) names, or `None` for any
/// other host.
pub fn parse_host(host: &str) -> Option<Endpoint<'_>> {
    let host = strip_port(host).trim_end_matches('.');
    let lower_len = SUFFIXES.iter().find_map(|suffix| {
        let cut = host.len().checked_sub(suffix.len())?;
        host.get(cut..)
            .filter(|tail| tail.eq_ignore_ascii_case(suffix))
            .map(|_| cut)
    })?;
    let labels = &host[..lower_len];
    if labels.is_empty() {
        return None;
    }
    // From the right: the region, then `dualstack`, then the service (or
    // S3's label), and whatever is left of it is S3's bucket.
    let (mut rest, mut region) = split_last(labels);
    let region_label = region.filter(|label| is_region(label));
    if region_label.is_none() {
        // No region: the last label is the service itself.
        rest = labels;
        region = None;
    } else {
        region = region_label;
    }
    let (mut before, label) = split_last(rest);
    let mut service = label?;
    if service.eq_ignore_ascii_case("dualstack") {
        let (b, l) = split_last(before);
        service = l?;
        before = b;
    }
    let s3 = service.eq_ignore_ascii_case("s3")
        || service
            .get(..3)
            .is_some_and(|p| p.eq_ignore_ascii_case("s3-"));
    if s3 {
        // `s3-us-west-2` (legacy), `s3-external-1` (us-east-1), `s3-fips`,
        // `s3-accesspoint`, `s3-website-us-east-1`, `s3-website.us-east-1`.
        if region.is_none() {
            let tail = service.get(3..).unwrap_or_default();
            region = tail
                .strip_prefix("website-")
                .or(Some(tail))
                .filter(|t| is_region(t));
            if tail == "external-1" {
                region = Some("us-east-1");
            }
        }
        let bucket = (!before.is_empty()).then_some(before);
        return Some(Endpoint {
            service: "s3",
            region,
            bucket,
        });
    }
    let service = service.strip_suffix("-fips").unwrap_or(service);
    if service.is_empty() {
        return None;
    }
    Some(Endpoint {
        service,
        region,
        bucket: None,
    })
}

/// `(everything before the last '.', the last label)`; a text with no dot
/// is all label.
fn split_last(text: &str) -> (&str, Option<&str>) {
    match text.rfind('.') {
        Some(dot) => (&text[..dot], Some(&text[dot + 1..])),
        None if text.is_empty() => ("", None),
        None => ("", Some(text)),
    }
}

fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host; // an IPv6 literal is no AWS endpoint anyway
    }
    host.rsplit_once(':')
        .filter(|(_, port)| port.bytes().all(|b| b.is_ascii_digit()))
        .map_or(host, |(name, _)| name)
}

/// Whether a label is a region name: `us-east-1`, `us-gov-west-1`,
/// `cn-north-1`, `eu-central-2`: two letters (or the European Sovereign
/// Cloud's `eusc`: `eusc-de-east-1`), words, then a number from 1. Any
/// case: host names are case-insensitive (callers that show a region
/// lowercase it).
pub fn is_region(label: &str) -> bool {
    let Some((words, number)) = label.rsplit_once('-') else {
        return false;
    };
    let mut words = words.split('-');
    let first = words.next().unwrap_or_default();
    let mut middle = 0;
    let words_ok = words.all(|w| {
        middle += 1;
        !w.is_empty() && w.bytes().all(|b| b.is_ascii_alphabetic())
    });
    let first_ok = (first.len() == 2 && first.bytes().all(|b| b.is_ascii_alphabetic()))
        || first.eq_ignore_ascii_case("eusc");
    first_ok
        && middle >= 1
        && words_ok
        && !number.is_empty()
        && !number.starts_with('0')
        && number.bytes().all(|b| b.is_ascii_digit())
}

/// Up to `N` pieces of `text` split on `separator`, in a fixed array:
/// `None` when there are more.
fn pieces<'a, const N: usize>(
    text: &'a str,
    separator: &str,
    skip_empty: bool,
) -> Option<([&'a str; N], usize)> {
    let mut out = [""; N];
    let mut n = 0;
    for piece in text.split(separator) {
        if skip_empty && piece.is_empty() {
            continue;
        }
        *out.get_mut(n)? = piece;
        n += 1;
    }
    Some((out, n))
}

/// A SigV4 credential scope: `AKID/20250101/us-east-1/dynamodb/aws4_request`
/// (SigV4a's has no region: `AKID/20250101/s3/aws4_request`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scope<'a> {
    pub region: Option<&'a str>,
    pub service: &'a str,
}

/// The scope in an `Authorization` header's `Credential=…`.
pub fn scope_from_authorization(value: &str) -> Option<Scope<'_>> {
    if !value.starts_with("AWS4-") {
        return None;
    }
    let start = value.find("Credential=")? + "Credential=".len();
    let credential = &value[start..];
    let end = credential
        .find(|c: char| c == ',' || c.is_ascii_whitespace())
        .unwrap_or(credential.len());
    parse_scope(&credential[..end], "/")
}

/// The scope in a presigned URL's `X-Amz-Credential` (its slashes
/// percent-encoded, or not).
pub fn scope_from_query(query: &str) -> Option<Scope<'_>> {
    let credential = query_param(query, "X-Amz-Credential")?;
    if credential.contains('/') {
        parse_scope(credential, "/")
    } else {
        parse_scope(credential, "%2F").or_else(|| parse_scope(credential, "%2f"))
    }
}

fn parse_scope<'a>(credential: &'a str, separator: &str) -> Option<Scope<'a>> {
    let (parts, n) = pieces::<5>(credential, separator, false)?;
    let scope = match &parts[..n] {
        [_, _, region, service, "aws4_request"] => Scope {
            region: Some(region),
            service,
        },
        [_, _, service, "aws4_request"] => Scope {
            region: None,
            service,
        },
        _ => return None,
    };
    (!scope.service.is_empty() && scope.region != Some("")).then_some(scope)
}

/// A query parameter's raw value (not percent-decoded).
pub fn query_param<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (key == name).then_some(value)
    })
}

/// Whether the query has this parameter (S3's sub-resources: `?uploads`).
fn has_param(query: Option<&str>, name: &str) -> bool {
    query.is_some_and(|q| {
        q.split('&')
            .any(|pair| pair.split_once('=').map_or(pair, |(k, _)| k) == name)
    })
}

/// What a request is, as AWS names it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Facts<'a> {
    pub service: Option<&'a str>,
    pub region: Option<&'a str>,
    pub operation: Option<&'a str>,
}

/// The parts of a request [`facts`] reads.
#[derive(Debug, Clone, Copy)]
pub struct RequestParts<'a> {
    pub method: &'a Method,
    /// The URI's authority (absolute-form, HTTP/2), else the `Host` header.
    pub host: Option<&'a str>,
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub headers: &'a HeaderMap,
    /// A form-urlencoded body, when the proxy read it ([`form_action`]).
    pub form: Option<&'a [u8]>,
}

/// The service, region and operation of a request.
pub fn facts<'a>(request: &RequestParts<'a>) -> Facts<'a> {
    let scope = request
        .headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(scope_from_authorization)
        .or_else(|| request.query.and_then(scope_from_query));
    let endpoint = request.host.and_then(parse_host);
    let service = scope.map(|s| s.service).or(endpoint.map(|e| e.service));
    let region = scope
        .and_then(|s| s.region)
        .or(endpoint.and_then(|e| e.region));
    let bucket = endpoint.and_then(|e| e.bucket);
    Facts {
        service,
        region,
        operation: operation(request, service, bucket.is_some()),
    }
}

/// The operation: `X-Amz-Target`, the RPCv2 path, `Action`, or the REST path.
fn operation<'a>(
    request: &RequestParts<'a>,
    service: Option<&str>,
    virtual_host: bool,
) -> Option<&'a str> {
    if let Some(target) = header(request.headers, "x-amz-target") {
        // `DynamoDB_20120810.PutItem`, `AmazonSQS.SendMessage`.
        return target.rsplit_once('.').map(|(_, op)| op).or(Some(target));
    }
    if request.headers.contains_key("smithy-protocol") {
        // `/service/{Service}/operation/{Operation}` (Smithy RPCv2).
        let mut segments = request.path.split('/').filter(|s| !s.is_empty());
        if let (Some("service"), Some(_), Some("operation"), Some(op)) = (
            segments.next(),
            segments.next(),
            segments.next(),
            segments.next(),
        ) {
            return Some(op);
        }
    }
    if let Some(action) = request.query.and_then(|q| query_param(q, "Action")) {
        return Some(action);
    }
    if let Some(action) = request.form.and_then(form_action) {
        return Some(action);
    }
    match service? {
        "lambda" => lambda_operation(request.method, request.path),
        "s3" => s3_operation(
            request.method,
            request.path,
            request.query,
            request.headers,
            virtual_host,
        ),
        _ => None,
    }
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// The `Action` of a form-urlencoded body (the query protocol's POST).
pub fn form_action(body: &[u8]) -> Option<&str> {
    let text = std::str::from_utf8(body).ok()?;
    query_param(text, "Action").filter(|a| !a.is_empty())
}

/// Lambda's REST operations, by method and path (the Lambda model's
/// `requestUri`s).
pub fn lambda_operation(method: &Method, path: &str) -> Option<&'static str> {
    let (segments, n) = pieces::<5>(path, "/", true)?;
    let m = method.as_str();
    let op = match (&segments[..n], m) {
        (["2015-03-31", "functions"], "GET") => "ListFunctions",
        (["2015-03-31", "functions"], "POST") => "CreateFunction",
        (["2015-03-31", "functions", _], "GET") => "GetFunction",
        (["2015-03-31", "functions", _], "DELETE") => "DeleteFunction",
        (["2015-03-31", "functions", _, "invocations"], "POST") => "Invoke",
        (["2015-03-31", "functions", _, "configuration"], "GET") => "GetFunctionConfiguration",
        (["2015-03-31", "functions", _, "configuration"], "PUT") => "UpdateFunctionConfiguration",
        (["2015-03-31", "functions", _, "code"], "PUT") => "UpdateFunctionCode",
        (["2015-03-31", "functions", _, "versions"], "GET") => "ListVersionsByFunction",
        (["2015-03-31", "functions", _, "versions"], "POST") => "PublishVersion",
        (["2015-03-31", "functions", _, "aliases"], "GET") => "ListAliases",
        (["2015-03-31", "functions", _, "aliases"], "POST") => "CreateAlias",
        (["2015-03-31", "functions", _, "aliases", _], "GET") => "GetAlias",
        (["2015-03-31", "functions", _, "aliases", _], "PUT") => "UpdateAlias",
        (["2015-03-31", "functions", _, "aliases", _], "DELETE") => "DeleteAlias",
        (["2015-03-31", "functions", _, "policy"], "GET") => "GetPolicy",
        (["2015-03-31", "functions", _, "policy"], "POST") => "AddPermission",
        (["2015-03-31", "functions", _, "policy", _], "DELETE") => "RemovePermission",
        (["2015-03-31", "event-source-mappings"], "GET") => "ListEventSourceMappings",
        (["2015-03-31", "event-source-mappings"], "POST") => "CreateEventSourceMapping",
        (["2015-03-31", "event-source-mappings", _], "GET") => "GetEventSourceMapping",
        (["2015-03-31", "event-source-mappings", _], "PUT") => "UpdateEventSourceMapping",
        (["2015-03-31", "event-source-mappings", _], "DELETE") => "DeleteEventSourceMapping",
        (["2014-11-13", "functions", _, "invoke-async"], "POST") => "InvokeAsync",
        (["2016-08-19", "account-settings"], "GET") => "GetAccountSettings",
        (["2017-03-31", "tags", _], "GET") => "ListTags",
        (["2017-03-31", "tags", _], "POST") => "TagResource",
        (["2017-03-31", "tags", _], "DELETE") => "UntagResource",
        (["2017-10-31", "functions", _, "concurrency"], "PUT") => "PutFunctionConcurrency",
        (["2017-10-31", "functions", _, "concurrency"], "DELETE") => "DeleteFunctionConcurrency",
        (["2019-09-30", "functions", _, "concurrency"], "GET") => "GetFunctionConcurrency",
        (["2021-11-15", "functions", _, "response-streaming-invocations"], "POST") => {
            "InvokeWithResponseStream"
        }
        _ => return None,
    };
    Some(op)
}

/// S3's REST operations, by method, path and query shape. `virtual_host`:
/// the bucket is in the host name, so the whole path is the key; else the
/// path's first segment is the bucket (path style).
pub fn s3_operation(
    method: &Method,
    path: &str,
    query: Option<&str>,
    headers: &HeaderMap,
    virtual_host: bool,
) -> Option<&'static str> {
    let path = path.strip_prefix('/').unwrap_or(path);
    let (has_bucket, key) = if virtual_host {
        (true, path)
    } else {
        match path.split_once('/') {
            Some((bucket, key)) => (!bucket.is_empty(), key),
            None => (!path.is_empty(), ""),
        }
    };
    let q = |name| has_param(query, name);
    let m = method.as_str();
    if !has_bucket {
        return (m == "GET").then_some("ListBuckets");
    }
    let op = if key.is_empty() {
        // The bucket's sub-resources first: `?tagging` is GetBucketTagging.
        const SUBRESOURCES: [(&str, &str, &str, &str); 10] = [
            (
                "policy",
                "GetBucketPolicy",
                "PutBucketPolicy",
                "DeleteBucketPolicy",
            ),
            (
                "tagging",
                "GetBucketTagging",
                "PutBucketTagging",
                "DeleteBucketTagging",
            ),
            ("cors", "GetBucketCors", "PutBucketCors", "DeleteBucketCors"),
            (
                "lifecycle",
                "GetBucketLifecycleConfiguration",
                "PutBucketLifecycleConfiguration",
                "DeleteBucketLifecycle",
            ),
            (
                "encryption",
                "GetBucketEncryption",
                "PutBucketEncryption",
                "DeleteBucketEncryption",
            ),
            (
                "website",
                "GetBucketWebsite",
                "PutBucketWebsite",
                "DeleteBucketWebsite",
            ),
            (
                "versioning",
                "GetBucketVersioning",
                "PutBucketVersioning",
                "",
            ),
            ("acl", "GetBucketAcl", "PutBucketAcl", ""),
            (
                "notification",
                "GetBucketNotificationConfiguration",
                "PutBucketNotificationConfiguration",
                "",
            ),
            ("location", "GetBucketLocation", "", ""),
        ];
        if let Some(&(_, get, put, delete)) = SUBRESOURCES.iter().find(|s| q(s.0)) {
            let op = match m {
                "GET" => get,
                "PUT" => put,
                "DELETE" => delete,
                _ => "",
            };
            return (!op.is_empty()).then_some(op);
        }
        match m {
            "GET" if q("list-type") => "ListObjectsV2",
            "GET" if q("versions") => "ListObjectVersions",
            "GET" if q("uploads") => "ListMultipartUploads",
            "GET" => "ListObjects",
            "PUT" => "CreateBucket",
            "DELETE" => "DeleteBucket",
            "HEAD" => "HeadBucket",
            "POST" if q("delete") => "DeleteObjects",
            _ => return None,
        }
    } else {
        let copy = headers.contains_key("x-amz-copy-source");
        match m {
            "GET" if q("tagging") => "GetObjectTagging",
            "GET" if q("acl") => "GetObjectAcl",
            "GET" if q("attributes") => "GetObjectAttributes",
            "GET" if q("uploadId") => "ListParts",
            "GET" => "GetObject",
            "HEAD" => "HeadObject",
            "PUT" if q("tagging") => "PutObjectTagging",
            "PUT" if q("acl") => "PutObjectAcl",
            "PUT" if q("uploadId") && copy => "UploadPartCopy",
            "PUT" if q("uploadId") => "UploadPart",
            "PUT" if copy => "CopyObject",
            "PUT" => "PutObject",
            "DELETE" if q("tagging") => "DeleteObjectTagging",
            "DELETE" if q("uploadId") => "AbortMultipartUpload",
            "DELETE" => "DeleteObject",
            "POST" if q("uploads") => "CreateMultipartUpload",
            "POST" if q("uploadId") => "CompleteMultipartUpload",
            "POST" if q("restore") => "RestoreObject",
            "POST" if q("select") => "SelectObjectContent",
            _ => return None,
        }
    };
    Some(op)
}

/// How a service speaks, for its errors to read right in every SDK.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// `awsJson1_0` (DynamoDB, SQS today): `__type` in a JSON body.
    AwsJson1_0,
    /// `awsJson1_1` (Kinesis, ECS, SageMaker, Glue, …).
    AwsJson1_1,
    /// `restJson1` (Lambda, API Gateway, …): `x-amzn-ErrorType`.
    RestJson,
    /// S3's `restXml`: `<Error><Code>`, `x-amz-request-id`, `x-amz-id-2`.
    S3Xml,
    /// `awsQuery` (STS, SNS, IAM, RDS, SQS's older SDKs): `<ErrorResponse>`.
    Query,
    /// `ec2Query`: `<Response><Errors><Error>`, `RequestID`.
    Ec2Query,
}

/// Services whose protocol is `restJson1` (signing names).
const REST_JSON: &[&str] = &[
    "lambda",
    "apigateway",
    "execute-api",
    "bedrock",
    "appsync",
    "eks",
    "batch",
    "iot",
    "mediaconvert",
    "elasticfilesystem",
    "ecr-public",
    "amplify",
    "cognito-sync",
    "glacier",
];

/// Services whose protocol is `awsQuery` (signing names).
const QUERY: &[&str] = &[
    "sts",
    "sns",
    "iam",
    "rds",
    "elasticache",
    "cloudformation",
    "autoscaling",
    "elasticloadbalancing",
    "ses",
    "email",
    "redshift",
    "sdb",
    "cloudsearch",
    "elasticbeanstalk",
    "importexport",
];

/// Services whose protocol is `awsJson1_0`.
const JSON_1_0: &[&str] = &["dynamodb", "sqs", "timestream", "swf"];

impl Protocol {
    /// The protocol of a request: told by the request's own shape first
    /// (`X-Amz-Target` is JSON, an `Action` or a form body is query), then
    /// by its service; `None` when neither says.
    pub fn of(headers: &HeaderMap, query: Option<&str>, service: Option<&str>) -> Option<Protocol> {
        let content_type = header(headers, "content-type").unwrap_or_default();
        if headers.contains_key("x-amz-target") {
            return Some(if content_type.starts_with("application/x-amz-json-1.0") {
                Protocol::AwsJson1_0
            } else if content_type.starts_with("application/x-amz-json-1.1") {
                Protocol::AwsJson1_1
            } else if service.is_some_and(|s| JSON_1_0.contains(&s)) {
                Protocol::AwsJson1_0
            } else {
                Protocol::AwsJson1_1
            });
        }
        let query_shaped = query.is_some_and(|q| query_param(q, "Action").is_some())
            || content_type.starts_with("application/x-www-form-urlencoded");
        match service {
            Some("ec2") => Some(Protocol::Ec2Query),
            Some("s3") => Some(Protocol::S3Xml),
            _ if query_shaped => Some(Protocol::Query),
            Some(s) if REST_JSON.contains(&s) => Some(Protocol::RestJson),
            Some(s) if QUERY.contains(&s) => Some(Protocol::Query),
            Some(s) if JSON_1_0.contains(&s) => Some(Protocol::AwsJson1_0),
            _ if content_type.starts_with("application/x-amz-json-1.0") => {
                Some(Protocol::AwsJson1_0)
            }
            _ if content_type.starts_with("application/x-amz-json-1.1") => {
                Some(Protocol::AwsJson1_1)
            }
            _ => None,
        }
    }
}

/// Global services, signed in us-east-1, whose hosts have no region.
const GLOBAL: [&str; 6] = ["s3", "sts", "iam", "route53", "cloudfront", "organizations"];

/// The region global endpoints are signed for.
const GLOBAL_REGION: &str = "us-east-1";

/// The regions AWS runs, in every partition (commercial, China, GovCloud,
/// the ISO partitions, the European Sovereign Cloud), sorted: a signed
/// region in this list always labels forward traffic's series
/// (`proxy::regions`). A region opened after this list was written is not
/// in it: that one is still counted under its name while few unknown
/// names have been seen (README "Forward proxy").
pub const AWS_REGIONS: [&str; 45] = [
    "af-south-1",
    "ap-east-1",
    "ap-east-2",
    "ap-northeast-1",
    "ap-northeast-2",
    "ap-northeast-3",
    "ap-south-1",
    "ap-south-2",
    "ap-southeast-1",
    "ap-southeast-2",
    "ap-southeast-3",
    "ap-southeast-4",
    "ap-southeast-5",
    "ap-southeast-6",
    "ap-southeast-7",
    "ca-central-1",
    "ca-west-1",
    "cn-north-1",
    "cn-northwest-1",
    "eu-central-1",
    "eu-central-2",
    "eu-isoe-west-1",
    "eu-north-1",
    "eu-south-1",
    "eu-south-2",
    "eu-west-1",
    "eu-west-2",
    "eu-west-3",
    "eusc-de-east-1",
    "il-central-1",
    "me-central-1",
    "me-south-1",
    "mx-central-1",
    "sa-east-1",
    "us-east-1",
    "us-east-2",
    "us-gov-east-1",
    "us-gov-west-1",
    "us-iso-east-1",
    "us-iso-west-1",
    "us-isob-east-1",
    "us-isof-east-1",
    "us-isof-south-1",
    "us-west-1",
    "us-west-2",
];

/// Whether `region` (lowercase, as a [`RegionName`] holds it) is one of
/// [`AWS_REGIONS`]: a binary search, no allocation.
pub fn is_aws_region(region: &str) -> bool {
    AWS_REGIONS.binary_search(&region).is_ok()
}

/// A region's name, lowercase, held inline: forward traffic's metrics are
/// labelled with it once the request is answered and gone, and keeping
/// it costs no allocation. At most [`RegionName::MAX`] bytes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct RegionName {
    bytes: [u8; RegionName::MAX],
    len: u8,
}

impl RegionName {
    /// The longest name kept (real ones are at most 15 bytes today,
    /// `us-isof-south-1`); a longer label is no region. 22, so that an
    /// `Option<RegionName>` takes the 24 bytes every request's future kept
    /// for its region before (an `Option<Cow<str>>`).
    pub const MAX: usize = 22;

    /// `other`: what forward traffic is counted under when its signature
    /// names a region past the bound (`proxy::regions`). Not a region's
    /// shape, so no request names it.
    pub const OTHER: RegionName = RegionName::constant(b"other");

    /// `name` as it is (lowercase ASCII, at most [`Self::MAX`] bytes).
    const fn constant(name: &[u8]) -> RegionName {
        assert!(name.len() <= Self::MAX);
        let mut bytes = [0; Self::MAX];
        let mut i = 0;
        while i < name.len() {
            bytes[i] = name[i];
            i += 1;
        }
        // At most MAX (asserted): the cast keeps every bit.
        RegionName {
            bytes,
            len: name.len() as u8,
        }
    }

    /// `label` lowercased, if it looks like a region ([`is_region`]).
    pub fn new(label: &str) -> Option<RegionName> {
        let len = u8::try_from(label.len()).ok()?;
        if label.len() > Self::MAX || !is_region(label) {
            return None;
        }
        let mut bytes = [0; Self::MAX];
        for (to, from) in bytes.iter_mut().zip(label.bytes()) {
            *to = from.to_ascii_lowercase();
        }
        Some(RegionName { bytes, len })
    }

    pub fn as_str(&self) -> &str {
        let bytes = self.bytes.get(..usize::from(self.len)).unwrap_or_default();
        // Only ASCII is ever stored (`is_region`): never the empty fallback.
        std::str::from_utf8(bytes).unwrap_or_default()
    }
}

// Every request's future holds one (`Proxy::handle`): kept that small.
const _: () = assert!(std::mem::size_of::<Option<RegionName>>() <= 24);

impl std::fmt::Debug for RegionName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.as_str())
    }
}

/// What a host name says of the region its requests are counted under
/// (SPEC §8): forward traffic to a destination without a `region` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostRegion {
    /// An AWS endpoint's name that says its region:
    /// `dynamodb.us-east-1.amazonaws.com`, `{bucket}.s3.{region}…`,
    /// `s3-{region}…`, the `fips` and `dualstack` forms.
    Named(RegionName),
    /// A global endpoint (`sts.amazonaws.com`, `s3.amazonaws.com`, a bucket
    /// on it): the region its requests are signed for, us-east-1 unless
    /// the signature says another. Only `amazonaws.com` has them.
    Global,
    /// Any other name (an emulator's, `dynamodb.amazonaws.com`): only the
    /// signature can tell.
    Unnamed,
}

/// [`HostRegion`] of `host` (a port allowed).
pub fn host_region(host: &str) -> HostRegion {
    let Some(endpoint) = parse_host(host) else {
        return HostRegion::Unnamed;
    };
    if let Some(region) = endpoint.region.and_then(RegionName::new) {
        return HostRegion::Named(region);
    }
    // Only the commercial partition's `amazonaws.com` has global endpoints.
    let host = strip_port(host).trim_end_matches('.');
    let commercial = host
        .len()
        .checked_sub(".amazonaws.com".len())
        .and_then(|cut| host.get(cut..))
        .is_some_and(|tail| tail.eq_ignore_ascii_case(".amazonaws.com"));
    let global = GLOBAL
        .iter()
        .any(|g| g.eq_ignore_ascii_case(endpoint.service));
    if global && commercial {
        HostRegion::Global
    } else {
        HostRegion::Unnamed
    }
}

impl HostRegion {
    /// The region a request to this host is counted under: the host's,
    /// else its SigV4 credential scope's ([`signed_region`]), else
    /// us-east-1 for a global endpoint. The request is read only when the
    /// host names no region. Every region a client names, by its host or
    /// its signature, goes through `bound` (the caller's bound on the names
    /// a client may pick: a forward client may name any host).
    pub fn of_request(
        self,
        headers: &HeaderMap,
        query: Option<&str>,
        bound: impl FnOnce(RegionName) -> RegionName,
    ) -> Option<RegionName> {
        match self {
            HostRegion::Named(region) => Some(bound(region)),
            HostRegion::Global => signed_region(headers, query)
                .map(bound)
                .or_else(|| RegionName::new(GLOBAL_REGION)),
            HostRegion::Unnamed => signed_region(headers, query).map(bound),
        }
    }
}

/// The region of a request's SigV4 credential scope (`Authorization`,
/// else a presigned URL's `X-Amz-Credential`), if it names one that looks
/// like a region (SigV4a's names none).
pub fn signed_region(headers: &HeaderMap, query: Option<&str>) -> Option<RegionName> {
    let scope = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(scope_from_authorization)
        .or_else(|| query.and_then(scope_from_query))?;
    RegionName::new(scope.region?)
}

#[cfg(test)]
mod host_region_tests {

    use http::HeaderValue;

    use super::*;

    /// The region an unsigned request to `host` is counted under.
    fn named(host: &str) -> Option<String> {
        counted(host, None)
    }

    /// The region a request to `host` signed with `authorization` is
    /// counted under.
    fn counted(host: &str, authorization: Option<&str>) -> Option<String> {
        let mut headers = HeaderMap::new();
        if let Some(value) = authorization {
            headers.insert(
                http::header::AUTHORIZATION,
                HeaderValue::from_str(value).unwrap(),
            );
        }
        host_region(host)
            .of_request(&headers, None, |region| region)
            .map(|region| region.as_str().to_owned())
    }

    fn is(host: &str, service: &str, region: &str) {
        assert_eq!(named(host).as_deref(), Some(region), "{host}");
        let named_service = parse_host(host).map(|e| e.service.to_ascii_lowercase());
        assert_eq!(named_service.as_deref(), Some(service), "{host}");
    }

    fn signed_in(region: &str) -> String {
        format!("AWS4-HMAC-SHA256 Credential=AKID/20250101/{region}/dynamodb/aws4_request, SignedHeaders=host, Signature=0")
    }

    #[test]
    fn the_signature_names_the_region_a_host_does_not() {
        let west = signed_in("us-west-2");
        // An emulator's name, or an AWS one that says no region.
        for host in [
            "aws.emulator.test",
            "dynamodb.amazonaws.com",
            "127.0.0.1:4566",
        ] {
            assert_eq!(
                counted(host, Some(&west)).as_deref(),
                Some("us-west-2"),
                "{host}"
            );
        }
        // A global endpoint: the signature's region, else us-east-1.
        assert_eq!(
            counted("s3.amazonaws.com", Some(&signed_in("eu-west-1"))).as_deref(),
            Some("eu-west-1")
        );
        let sigv4a = "AWS4-ECDSA-P256-SHA256 Credential=AKID/20250101/s3/aws4_request, SignedHeaders=host, Signature=0";
        assert_eq!(
            counted("bucket.s3.amazonaws.com", Some(sigv4a)).as_deref(),
            Some("us-east-1")
        );
        assert_eq!(counted("aws.emulator.test", Some(sigv4a)), None);
        // A host that names its region keeps it; the header is not read.
        assert_eq!(
            counted("dynamodb.us-east-1.amazonaws.com", Some(&west)).as_deref(),
            Some("us-east-1")
        );
        // A presigned URL's scope.
        let mut headers = HeaderMap::new();
        let query =
            "X-Amz-Credential=AKID%2F20250101%2Fap-south-1%2Fs3%2Faws4_request&X-Amz-Signature=f";
        assert_eq!(
            host_region("files.emulator.test")
                .of_request(&headers, Some(query), |region| region)
                .map(|r| r.as_str().to_owned())
                .as_deref(),
            Some("ap-south-1")
        );
        // Only what looks like a region labels a series, lowercased.
        assert_eq!(
            counted("x.test", Some(&signed_in("EU-WEST-3"))).as_deref(),
            Some("eu-west-3")
        );
        for junk in [
            "not-a-region",
            "us-east-1x",
            "aa-aaaaaaaaaaaaaaaaaaaaaa-1",
            "",
        ] {
            assert_eq!(counted("x.test", Some(&signed_in(junk))), None, "{junk}");
        }
        let longest = format!("aa-{}-1", "a".repeat(RegionName::MAX - 5));
        assert_eq!(
            RegionName::new(&longest).map(|r| r.as_str().to_owned()),
            Some(longest.clone())
        );
        assert_eq!(RegionName::new(&longest.replace("aa-", "aa-a")), None);
        headers.insert(
            http::header::AUTHORIZATION,
            HeaderValue::from_static("Bearer x"),
        );
        assert_eq!(
            host_region("x.test").of_request(&headers, None, |region| region),
            None
        );
    }

    #[test]
    fn the_known_regions_are_sorted_region_names() {
        assert!(AWS_REGIONS.windows(2).all(|w| w[0] < w[1]), "sorted, once");
        for region in AWS_REGIONS {
            let name = RegionName::new(region).map(|r| r.as_str().to_owned());
            assert_eq!(name.as_deref(), Some(region));
            assert!(is_aws_region(region));
        }
        assert!(!is_aws_region("zz-q1-1"));
        assert!(!is_aws_region("US-EAST-1"), "only as a RegionName holds it");
        assert_eq!(RegionName::OTHER.as_str(), "other");
        assert_eq!(RegionName::new("other"), None, "no request names it");
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
        // The European Sovereign Cloud: a partition of its own.
        is(
            "dynamodb.eusc-de-east-1.amazonaws.eu",
            "dynamodb",
            "eusc-de-east-1",
        );
        is(
            "bucket.s3.eusc-de-east-1.amazonaws.eu",
            "s3",
            "eusc-de-east-1",
        );
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
            "iam.amazonaws.com.cn",
            "sts.amazonaws.eu",
            "s3.api.aws",
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

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    fn endpoint<'a>(
        service: &'a str,
        region: Option<&'a str>,
        bucket: Option<&'a str>,
    ) -> Endpoint<'a> {
        Endpoint {
            service,
            region,
            bucket,
        }
    }

    #[test]
    fn hosts_name_their_service_and_region() {
        let cases = [
            (
                "dynamodb.us-east-1.amazonaws.com",
                endpoint("dynamodb", Some("us-east-1"), None),
            ),
            (
                "lambda.us-west-2.amazonaws.com:443",
                endpoint("lambda", Some("us-west-2"), None),
            ),
            (
                "dynamodb-fips.us-gov-west-1.amazonaws.com",
                endpoint("dynamodb", Some("us-gov-west-1"), None),
            ),
            (
                "dynamodb.us-east-1.api.aws",
                endpoint("dynamodb", Some("us-east-1"), None),
            ),
            (
                "sqs.cn-north-1.amazonaws.com.cn",
                endpoint("sqs", Some("cn-north-1"), None),
            ),
            ("sts.amazonaws.com", endpoint("sts", None, None)),
            (
                "runtime.sagemaker.eu-west-1.amazonaws.com",
                endpoint("sagemaker", Some("eu-west-1"), None),
            ),
            ("s3.amazonaws.com", endpoint("s3", None, None)),
            (
                "s3.us-west-2.amazonaws.com",
                endpoint("s3", Some("us-west-2"), None),
            ),
            (
                "photos.s3.us-west-2.amazonaws.com",
                endpoint("s3", Some("us-west-2"), Some("photos")),
            ),
            (
                "my.dotted.bucket.s3.eu-central-1.amazonaws.com",
                endpoint("s3", Some("eu-central-1"), Some("my.dotted.bucket")),
            ),
            (
                "photos.s3.amazonaws.com",
                endpoint("s3", None, Some("photos")),
            ),
            (
                "s3.dualstack.ap-south-1.amazonaws.com",
                endpoint("s3", Some("ap-south-1"), None),
            ),
            (
                "photos.s3.dualstack.ap-south-1.amazonaws.com",
                endpoint("s3", Some("ap-south-1"), Some("photos")),
            ),
            (
                "s3-fips.us-east-2.amazonaws.com",
                endpoint("s3", Some("us-east-2"), None),
            ),
            (
                "s3-fips.dualstack.us-east-2.amazonaws.com",
                endpoint("s3", Some("us-east-2"), None),
            ),
            (
                "photos.s3-us-west-2.amazonaws.com",
                endpoint("s3", Some("us-west-2"), Some("photos")),
            ),
            (
                "s3-external-1.amazonaws.com",
                endpoint("s3", Some("us-east-1"), None),
            ),
            (
                "photos.s3-website-eu-west-1.amazonaws.com",
                endpoint("s3", Some("eu-west-1"), Some("photos")),
            ),
            (
                "DYNAMODB.us-east-1.AMAZONAWS.COM",
                endpoint("DYNAMODB", Some("us-east-1"), None),
            ),
        ];
        for (host, expected) in cases {
            assert_eq!(parse_host(host), Some(expected), "{host}");
        }
        for host in [
            "example.com",
            "amazonaws.com",
            ".amazonaws.com",
            "127.0.0.1:4566",
            "amazonaws.com.evil.net",
            "[::1]:80",
            "",
        ] {
            assert_eq!(parse_host(host), None, "{host}");
        }
    }

    #[test]
    fn regions_look_like_regions() {
        for region in [
            "us-east-1",
            "us-gov-west-1",
            "cn-northwest-1",
            "il-central-1",
            "us-isob-east-1",
            "eusc-de-east-1",
        ] {
            assert!(is_region(region), "{region}");
        }
        for label in [
            "s3",
            "external-1",
            "dualstack",
            "us-east",
            "useast-1",
            "us--1",
            "us-east-x",
            "us-east-0",
            "eus-de-east-1",
            "euscx-de-east-1",
        ] {
            assert!(!is_region(label), "{label}");
        }
    }

    #[test]
    fn scopes_come_from_the_authorization_header_and_the_query() {
        let auth = "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20250101/us-east-1/dynamodb/aws4_request, SignedHeaders=host;x-amz-date, Signature=abc";
        assert_eq!(
            scope_from_authorization(auth),
            Some(Scope {
                region: Some("us-east-1"),
                service: "dynamodb"
            })
        );
        let sigv4a = "AWS4-ECDSA-P256-SHA256 Credential=AKID/20250101/s3/aws4_request, SignedHeaders=host, Signature=abc";
        assert_eq!(
            scope_from_authorization(sigv4a),
            Some(Scope {
                region: None,
                service: "s3"
            })
        );
        assert_eq!(scope_from_authorization("Bearer x"), None);
        assert_eq!(
            scope_from_authorization("AWS4-HMAC-SHA256 Credential=AKID/2025/x"),
            None
        );
        assert_eq!(
            scope_from_authorization("AWS4-HMAC-SHA256 Credential=a/b//s3/aws4_request"),
            None
        );
        let presigned = "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKID%2F20250101%2Feu-west-1%2Fs3%2Faws4_request&X-Amz-Signature=f";
        assert_eq!(
            scope_from_query(presigned),
            Some(Scope {
                region: Some("eu-west-1"),
                service: "s3"
            })
        );
        assert_eq!(
            scope_from_query("X-Amz-Credential=AKID/20250101/eu-west-1/s3/aws4_request"),
            Some(Scope {
                region: Some("eu-west-1"),
                service: "s3"
            })
        );
        assert_eq!(scope_from_query("a=b"), None);
    }

    fn facts_of<'a>(
        method: &'a Method,
        host: Option<&'a str>,
        path: &'a str,
        query: Option<&'a str>,
        headers: &'a HeaderMap,
    ) -> Facts<'a> {
        facts(&RequestParts {
            method,
            host,
            path,
            query,
            headers,
            form: None,
        })
    }

    #[test]
    fn the_scope_wins_over_the_host_and_the_target_names_the_operation() {
        let mut headers = HeaderMap::new();
        headers.insert("authorization", HeaderValue::from_static("AWS4-HMAC-SHA256 Credential=AKID/20250101/us-west-2/dynamodb/aws4_request, SignedHeaders=host, Signature=0"));
        headers.insert(
            "x-amz-target",
            HeaderValue::from_static("DynamoDB_20120810.PutItem"),
        );
        let f = facts_of(&Method::POST, Some("127.0.0.1:8000"), "/", None, &headers);
        assert_eq!(
            f,
            Facts {
                service: Some("dynamodb"),
                region: Some("us-west-2"),
                operation: Some("PutItem")
            }
        );
        let none = HeaderMap::new();
        let f = facts_of(
            &Method::GET,
            Some("sts.us-east-1.amazonaws.com"),
            "/",
            Some("Action=GetCallerIdentity&Version=2011-06-15"),
            &none,
        );
        assert_eq!(
            f,
            Facts {
                service: Some("sts"),
                region: Some("us-east-1"),
                operation: Some("GetCallerIdentity")
            }
        );
        let f = facts_of(&Method::GET, Some("example.com"), "/", None, &none);
        assert_eq!(f, Facts::default());
        let mut rpc = HeaderMap::new();
        rpc.insert("smithy-protocol", HeaderValue::from_static("rpc-v2-cbor"));
        let f = facts_of(
            &Method::POST,
            Some("monitoring.us-east-1.amazonaws.com"),
            "/service/GraniteServiceVersion20100801/operation/PutMetricData",
            None,
            &rpc,
        );
        assert_eq!(f.operation, Some("PutMetricData"));
    }

    #[test]
    fn form_bodies_name_the_action() {
        assert_eq!(
            form_action(b"Action=SendMessage&Version=2012-11-05"),
            Some("SendMessage")
        );
        assert_eq!(
            form_action(b"Version=1&Action=AssumeRole"),
            Some("AssumeRole")
        );
        assert_eq!(form_action(b"Action="), None);
        assert_eq!(form_action(b"\xff"), None);
        let none = HeaderMap::new();
        let f = facts(&RequestParts {
            method: &Method::POST,
            host: Some("sqs.us-east-1.amazonaws.com"),
            path: "/",
            query: None,
            headers: &none,
            form: Some(b"Action=SendMessage"),
        });
        assert_eq!(f.operation, Some("SendMessage"));
    }

    #[test]
    fn lambda_rest_paths() {
        let cases = [
            (Method::POST, "/2015-03-31/functions/my-fn/invocations", Some("Invoke")),
            (Method::POST, "/2015-03-31/functions/arn%3Aaws%3Alambda%3Aus-east-1%3A1%3Afunction%3Af/invocations", Some("Invoke")),
            (Method::GET, "/2015-03-31/functions/", Some("ListFunctions")),
            (Method::GET, "/2015-03-31/functions/f", Some("GetFunction")),
            (Method::DELETE, "/2015-03-31/functions/f", Some("DeleteFunction")),
            (Method::POST, "/2015-03-31/functions", Some("CreateFunction")),
            (Method::GET, "/2015-03-31/functions/f/configuration", Some("GetFunctionConfiguration")),
            (Method::POST, "/2014-11-13/functions/f/invoke-async/", Some("InvokeAsync")),
            (Method::POST, "/2021-11-15/functions/f/response-streaming-invocations", Some("InvokeWithResponseStream")),
            (Method::GET, "/2016-08-19/account-settings/", Some("GetAccountSettings")),
            (Method::PATCH, "/2015-03-31/functions/f", None),
            (Method::GET, "/", None),
        ];
        for (method, path, expected) in cases {
            assert_eq!(lambda_operation(&method, path), expected, "{method} {path}");
        }
    }

    #[test]
    fn s3_rest_shapes_in_both_styles() {
        let none = HeaderMap::new();
        let mut copy = HeaderMap::new();
        copy.insert("x-amz-copy-source", HeaderValue::from_static("/b/k"));
        /// Method, path, query, headers, virtual-hosted, the operation.
        type Case<'a> = (
            Method,
            &'a str,
            Option<&'a str>,
            &'a HeaderMap,
            bool,
            Option<&'a str>,
        );
        let cases: [Case<'_>; 20] = [
            (Method::GET, "/", None, &none, false, Some("ListBuckets")),
            (Method::GET, "/b/k", None, &none, false, Some("GetObject")),
            (
                Method::GET,
                "/k/with/slashes",
                None,
                &none,
                true,
                Some("GetObject"),
            ),
            (Method::PUT, "/b/k", None, &none, false, Some("PutObject")),
            (Method::PUT, "/k", None, &copy, true, Some("CopyObject")),
            (Method::HEAD, "/b/k", None, &none, false, Some("HeadObject")),
            (
                Method::DELETE,
                "/b/k",
                None,
                &none,
                false,
                Some("DeleteObject"),
            ),
            (
                Method::GET,
                "/b",
                Some("list-type=2&prefix=a"),
                &none,
                false,
                Some("ListObjectsV2"),
            ),
            (
                Method::GET,
                "/",
                Some("list-type=2"),
                &none,
                true,
                Some("ListObjectsV2"),
            ),
            (
                Method::GET,
                "/b/",
                Some("prefix=a"),
                &none,
                false,
                Some("ListObjects"),
            ),
            (Method::PUT, "/b", None, &none, false, Some("CreateBucket")),
            (Method::PUT, "/", None, &none, true, Some("CreateBucket")),
            (Method::HEAD, "/b", None, &none, false, Some("HeadBucket")),
            (
                Method::DELETE,
                "/b",
                None,
                &none,
                false,
                Some("DeleteBucket"),
            ),
            (
                Method::POST,
                "/b",
                Some("delete"),
                &none,
                false,
                Some("DeleteObjects"),
            ),
            (
                Method::GET,
                "/b",
                Some("tagging"),
                &none,
                false,
                Some("GetBucketTagging"),
            ),
            (
                Method::POST,
                "/b/k",
                Some("uploads"),
                &none,
                false,
                Some("CreateMultipartUpload"),
            ),
            (
                Method::PUT,
                "/b/k",
                Some("partNumber=1&uploadId=x"),
                &none,
                false,
                Some("UploadPart"),
            ),
            (
                Method::DELETE,
                "/b/k",
                Some("uploadId=x"),
                &none,
                false,
                Some("AbortMultipartUpload"),
            ),
            (Method::POST, "/b/k", None, &none, false, None),
        ];
        for (method, path, query, headers, virtual_host, expected) in cases {
            assert_eq!(
                s3_operation(&method, path, query, headers, virtual_host),
                expected,
                "{method} {path} {query:?} virtual host: {virtual_host}"
            );
        }
        // From a whole request: the host's bucket makes it virtual-hosted.
        let f = facts_of(
            &Method::GET,
            Some("photos.s3.us-west-2.amazonaws.com"),
            "/cat.jpg",
            None,
            &none,
        );
        assert_eq!(
            f,
            Facts {
                service: Some("s3"),
                region: Some("us-west-2"),
                operation: Some("GetObject")
            }
        );
        let f = facts_of(
            &Method::GET,
            Some("s3.us-west-2.amazonaws.com"),
            "/photos",
            None,
            &none,
        );
        assert_eq!(f.operation, Some("ListObjects"));
    }

    #[test]
    fn protocols_from_the_request_then_the_service() {
        let mut json = HeaderMap::new();
        json.insert(
            "x-amz-target",
            HeaderValue::from_static("AmazonSQS.SendMessage"),
        );
        json.insert(
            "content-type",
            HeaderValue::from_static("application/x-amz-json-1.0"),
        );
        assert_eq!(
            Protocol::of(&json, None, Some("sqs")),
            Some(Protocol::AwsJson1_0)
        );
        let mut form = HeaderMap::new();
        form.insert(
            "content-type",
            HeaderValue::from_static("application/x-www-form-urlencoded; charset=utf-8"),
        );
        assert_eq!(
            Protocol::of(&form, None, Some("sqs")),
            Some(Protocol::Query)
        );
        assert_eq!(
            Protocol::of(&form, None, Some("ec2")),
            Some(Protocol::Ec2Query)
        );
        let none = HeaderMap::new();
        assert_eq!(
            Protocol::of(&none, None, Some("lambda")),
            Some(Protocol::RestJson)
        );
        assert_eq!(Protocol::of(&none, None, Some("s3")), Some(Protocol::S3Xml));
        assert_eq!(
            Protocol::of(&none, None, Some("sts")),
            Some(Protocol::Query)
        );
        assert_eq!(
            Protocol::of(&none, Some("Action=DescribeInstances"), None),
            Some(Protocol::Query)
        );
        assert_eq!(
            Protocol::of(&none, None, Some("dynamodb")),
            Some(Protocol::AwsJson1_0)
        );
        assert_eq!(Protocol::of(&none, None, None), None);
    }
}

#[cfg(test)]
mod properties {
    //! Arbitrary hosts, scopes, paths and bodies give a value or `None`, never a panic.

    use proptest::prelude::*;

    use super::*;

    proptest! {
        #[test]
        fn arbitrary_input_never_panics(
            host in "\\PC{0,40}",
            aws_host in "[a-z0-9.-]{0,20}\\.(amazonaws\\.com|api\\.aws)(:[0-9]{1,5})?",
            auth in "(AWS4-HMAC-SHA256 Credential=)?[A-Za-z0-9/_%,= -]{0,60}",
            path in "(/[a-z0-9-]{0,12}){0,6}",
            query in "[a-zA-Z0-9=&%-]{0,40}",
            body in prop::collection::vec(any::<u8>(), 0..40),
        ) {
            let _ = parse_host(&host);
            let _ = parse_host(&aws_host);
            let _ = scope_from_authorization(&auth);
            let _ = scope_from_query(&query);
            let _ = form_action(&body);
            let _ = host_region(&host).of_request(&HeaderMap::new(), Some(&query), |r| r);
            let mut signed = HeaderMap::new();
            if let Ok(value) = http::HeaderValue::from_str(&auth) {
                signed.insert(http::header::AUTHORIZATION, value);
            }
            for host in [&host, &aws_host] {
                if let Some(region) = host_region(host).of_request(&signed, None, |r| r) {
                    prop_assert!(is_region(region.as_str()));
                    prop_assert_eq!(region.as_str(), region.as_str().to_ascii_lowercase());
                }
            }
            let headers = HeaderMap::new();
            for method in [Method::GET, Method::PUT, Method::POST, Method::DELETE, Method::HEAD] {
                let _ = lambda_operation(&method, &path);
                let _ = s3_operation(&method, &path, Some(&query), &headers, false);
                let _ = facts(&RequestParts { method: &method, host: Some(&aws_host), path: &path, query: Some(&query), headers: &headers, form: Some(&body) });
            }
        }
    }
}

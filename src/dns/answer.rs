//! DNS messages, pure: reading a client's query (malformed ones refused
//! without amplification) and writing the answers faultline makes itself
//! (a fault's, a fixed record's, a refusal), within the size the client
//! can take over UDP.

use std::net::IpAddr;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, SOA};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};

use crate::config::dns_key;
use crate::fault::{DnsAnswer, DnsFault};
use crate::metrics::DnsOutcome;

/// A DNS header: the smallest message, and every refusal's size.
pub(super) const HEADER_LEN: usize = 12;
/// What a UDP answer may fill when the query has no EDNS (RFC 1035).
pub(super) const CLASSIC_UDP_PAYLOAD: usize = 512;
/// The most a UDP answer fills whatever EDNS size the client offers, and
/// the size faultline offers in its own OPT record: the DNS Flag Day 2020
/// value, which avoids IP fragmentation.
pub(super) const MAX_UDP_PAYLOAD: usize = 1232;

/// A query faultline will answer.
#[derive(Debug)]
pub(super) struct Query {
    pub(super) message: Message,
    /// The name as rules and records compare it: lowercase, no final dot.
    pub(super) key: String,
    pub(super) qtype: u16,
    /// The largest answer the client takes over UDP.
    pub(super) udp_limit: usize,
}

/// What reading a packet gave.
#[derive(Debug)]
pub(super) enum Parsed {
    Query(Box<Query>),
    /// Answer these bytes at once: a bare header with an error code, never
    /// longer than the packet that asked.
    Refuse(Vec<u8>, DnsOutcome),
    /// Not even a query's header, or a response: nothing is sent back (a
    /// response is never answered, so two servers cannot ping-pong).
    Drop,
}

/// Reads one DNS message from a client.
pub(super) fn parse(packet: &[u8]) -> Parsed {
    if packet.len() < HEADER_LEN || packet[2] & 0x80 != 0 {
        return Parsed::Drop;
    }
    let refuse = |code: ResponseCode, outcome| Parsed::Refuse(bare_header(packet, code), outcome);
    // hickory refuses wrong counts, cut records and compression pointers
    // that do not point backwards (so no loop), without panicking.
    let Ok(message) = Message::from_vec(packet) else {
        return refuse(ResponseCode::FormErr, DnsOutcome::Malformed);
    };
    if message.op_code() != OpCode::Query {
        return refuse(ResponseCode::NotImp, DnsOutcome::NotImplemented);
    }
    let [question] = message.queries() else {
        return refuse(ResponseCode::FormErr, DnsOutcome::Malformed);
    };
    if question.query_class() != DNSClass::IN {
        return refuse(ResponseCode::NotImp, DnsOutcome::NotImplemented);
    }
    let key = key_of(question.name());
    let qtype = u16::from(question.query_type());
    let udp_limit = message
        .extensions()
        .as_ref()
        .map_or(CLASSIC_UDP_PAYLOAD, |edns| {
            usize::from(edns.max_payload()).clamp(CLASSIC_UDP_PAYLOAD, MAX_UDP_PAYLOAD)
        });
    Parsed::Query(Box::new(Query {
        message,
        key,
        qtype,
        udp_limit,
    }))
}

/// The name as rules and records compare it, in one allocation: labels
/// lowercased and joined by dots. A label holding a dot or a byte that is
/// not printable ASCII takes hickory's escaped form instead, so it cannot
/// pass for another name.
fn key_of(name: &Name) -> String {
    let plain = name
        .iter()
        .all(|label| label.iter().all(|b| b.is_ascii_graphic() && *b != b'.'));
    if !plain {
        return dns_key(&name.to_ascii());
    }
    let mut key = String::with_capacity(name.len());
    for (i, label) in name.iter().enumerate() {
        if i > 0 {
            key.push('.');
        }
        key.extend(label.iter().map(|b| char::from(b.to_ascii_lowercase())));
    }
    key
}

/// The names of the SOA that negative answers carry, made once.
fn soa_names() -> &'static (Name, Name) {
    static NAMES: std::sync::OnceLock<(Name, Name)> = std::sync::OnceLock::new();
    NAMES.get_or_init(|| {
        let name = |labels: [&str; 3]| Name::from_labels(labels).unwrap_or_else(|_| Name::root());
        (
            name(["ns", "faultline", "invalid"]),
            name(["hostmaster", "faultline", "invalid"]),
        )
    })
}

/// A response header alone, for a packet that is no query faultline
/// answers: its id, opcode and RD kept, `QR` set, `code`, no records.
fn bare_header(packet: &[u8], code: ResponseCode) -> Vec<u8> {
    let mut header = vec![0u8; HEADER_LEN];
    header[..2].copy_from_slice(&packet[..2]);
    // QR, the query's opcode and RD; RA: faultline resolves.
    header[2] = 0x80 | (packet[2] & 0x79);
    header[3] = 0x80 | (u16::from(code) as u8 & 0x0f);
    header
}

impl Query {
    /// An empty response to this query with `code`.
    pub(super) fn response(&self, code: ResponseCode) -> Message {
        let request = &self.message;
        let mut response = Message::new();
        response
            .set_id(request.id())
            .set_message_type(MessageType::Response)
            .set_op_code(OpCode::Query)
            .set_recursion_desired(request.recursion_desired())
            .set_recursion_available(true)
            .set_checking_disabled(request.checking_disabled())
            .set_response_code(code);
        response.add_queries(request.queries().iter().cloned());
        if request.extensions().is_some() {
            let mut edns = Edns::new();
            edns.set_max_payload(MAX_UDP_PAYLOAD as u16).set_version(0);
            response.set_edns(edns);
        }
        response
    }

    fn name(&self) -> Name {
        self.message
            .queries()
            .first()
            .map(|q| q.name().clone())
            .unwrap_or_else(Name::root)
    }

    /// `addresses` as the answer, those of the type asked; none of that
    /// type is NODATA, negative-cached for `ttl` seconds.
    pub(super) fn addresses(&self, addresses: &[IpAddr], ttl: u32) -> Message {
        let name = self.name();
        let records: Vec<Record> = addresses
            .iter()
            .filter_map(|ip| match (ip, RecordType::from(self.qtype)) {
                (IpAddr::V4(v4), RecordType::A) => Some(RData::A(A(*v4))),
                (IpAddr::V6(v6), RecordType::AAAA) => Some(RData::AAAA(AAAA(*v6))),
                _ => None,
            })
            .map(|rdata| Record::from_rdata(name.clone(), ttl, rdata))
            .collect();
        if records.is_empty() {
            return self.negative(ResponseCode::NoError, ttl);
        }
        let mut response = self.response(ResponseCode::NoError);
        response.add_answers(records);
        response
    }

    /// NXDOMAIN or NODATA with an SOA whose TTL and minimum are `ttl`, so a
    /// client caches the negative answer that long and no longer (RFC 2308).
    pub(super) fn negative(&self, code: ResponseCode, ttl: u32) -> Message {
        let name = self.name();
        let zone = if name.num_labels() > 1 {
            name.base_name()
        } else {
            Name::root()
        };
        let (mname, rname) = soa_names();
        let soa = SOA::new(mname.clone(), rname.clone(), 1, 3600, 600, 86400, ttl);
        let mut response = self.response(code);
        response.add_name_server(Record::from_rdata(zone, ttl, RData::SOA(soa)));
        response
    }

    /// The answer of a `dns` fault; `None` for `timeout` (no answer at all).
    pub(super) fn fault(&self, fault: &DnsFault) -> Option<Message> {
        let ttl = fault.ttl_secs();
        Some(match &fault.answer {
            DnsAnswer::NxDomain => self.negative(ResponseCode::NXDomain, ttl),
            DnsAnswer::NoData => self.negative(ResponseCode::NoError, ttl),
            DnsAnswer::ServFail => self.response(ResponseCode::ServFail),
            DnsAnswer::Refused => self.response(ResponseCode::Refused),
            DnsAnswer::Timeout => return None,
            DnsAnswer::Addresses(addresses) => self.addresses(addresses, ttl),
        })
    }

    /// The response's bytes within `limit` (`None`: TCP, up to 65535):
    /// one that does not fit is cut to its header, question and OPT with
    /// `TC` set, so the client asks again over TCP.
    pub(super) fn encode(&self, response: &Message, limit: Option<usize>) -> Option<Vec<u8>> {
        let limit = limit.unwrap_or(usize::from(u16::MAX));
        match response.to_vec() {
            Ok(bytes) if bytes.len() <= limit => Some(bytes),
            _ => response
                .truncate()
                .to_vec()
                .ok()
                .filter(|bytes| bytes.len() <= limit),
        }
    }

    /// An upstream resolver's answer, relayed with the client's id, within
    /// `limit` (cut to `TC` as [`Query::encode`] does when it does not fit).
    pub(super) fn relay(&self, mut answer: Vec<u8>, limit: Option<usize>) -> Option<Vec<u8>> {
        if answer.len() < HEADER_LEN {
            return None;
        }
        answer[..2].copy_from_slice(&self.message.id().to_be_bytes());
        if answer.len() <= limit.unwrap_or(usize::from(u16::MAX)) {
            return Some(answer);
        }
        let mut cut = self.response(ResponseCode::NoError);
        cut.set_truncated(true);
        self.encode(&cut, limit)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use hickory_proto::op::Query as Question;

    fn query(name: &str, qtype: RecordType, edns: Option<u16>) -> Vec<u8> {
        let mut message = Message::new();
        message
            .set_id(0xbeef)
            .set_recursion_desired(true)
            .add_query(Question::query(Name::from_ascii(name).unwrap(), qtype));
        if let Some(size) = edns {
            let mut e = Edns::new();
            e.set_max_payload(size);
            message.set_edns(e);
        }
        message.to_vec().unwrap()
    }

    fn parsed(packet: &[u8]) -> Box<Query> {
        match parse(packet) {
            Parsed::Query(query) => query,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn names_are_compared_lowercase_without_the_final_dot() {
        let q = parsed(&query(
            "DynamoDB.US-East-1.amazonaws.com.",
            RecordType::AAAA,
            None,
        ));
        assert_eq!(q.key, "dynamodb.us-east-1.amazonaws.com");
        assert_eq!(q.qtype, 28);
        assert_eq!(q.udp_limit, CLASSIC_UDP_PAYLOAD);
        let q = parsed(&query("a.test.", RecordType::A, Some(4096)));
        assert_eq!(q.udp_limit, MAX_UDP_PAYLOAD);
        let q = parsed(&query("a.test.", RecordType::A, Some(100)));
        assert_eq!(q.udp_limit, CLASSIC_UDP_PAYLOAD);
    }

    #[test]
    fn malformed_packets_get_a_bare_header_or_nothing() {
        let good = query("a.test.", RecordType::A, None);
        assert!(matches!(parse(&good[..5]), Parsed::Drop));
        // A response is never answered.
        let mut response = good.clone();
        response[2] |= 0x80;
        assert!(matches!(parse(&response), Parsed::Drop));
        // The question cut short; two questions announced, one sent.
        for bad in [good[..good.len() - 3].to_vec(), {
            let mut b = good.clone();
            b[5] = 2;
            b
        }] {
            let Parsed::Refuse(answer, DnsOutcome::Malformed) = parse(&bad) else {
                panic!("not refused");
            };
            assert_eq!(answer.len(), HEADER_LEN);
            assert!(answer.len() <= bad.len());
            assert_eq!(&answer[..2], &[0xbe, 0xef]);
            assert_eq!(answer[3] & 0x0f, 1, "FORMERR");
        }
        // A compression pointer to itself.
        let mut looped = good[..HEADER_LEN].to_vec();
        looped.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1]);
        assert!(matches!(
            parse(&looped),
            Parsed::Refuse(ref a, DnsOutcome::Malformed) if a.len() == HEADER_LEN
        ));
    }

    #[test]
    fn answers_too_large_for_udp_are_cut_with_tc() {
        let q = parsed(&query("many.test.", RecordType::A, None));
        let addresses: Vec<IpAddr> = (0..=255u8).map(|i| IpAddr::from([10, 0, 0, i])).collect();
        let answer = q.addresses(&addresses, 5);
        let bytes = q.encode(&answer, Some(q.udp_limit)).unwrap();
        assert!(bytes.len() <= CLASSIC_UDP_PAYLOAD);
        let read = Message::from_vec(&bytes).unwrap();
        assert!(read.truncated());
        assert!(read.answers().is_empty());
        // Over TCP it goes whole.
        let whole = Message::from_vec(&q.encode(&answer, None).unwrap()).unwrap();
        assert_eq!(whole.answers().len(), 256);
    }

    #[test]
    fn negative_answers_carry_the_fault_ttl_in_their_soa() {
        let q = parsed(&query(
            "dynamodb.us-east-1.amazonaws.com.",
            RecordType::A,
            None,
        ));
        let fault = DnsFault {
            answer: DnsAnswer::NoData,
            ttl: Duration::from_secs(3),
        };
        let bytes = q.encode(&q.fault(&fault).unwrap(), Some(512)).unwrap();
        let read = Message::from_vec(&bytes).unwrap();
        assert_eq!(read.response_code(), ResponseCode::NoError);
        assert!(read.answers().is_empty());
        let soa = &read.name_servers()[0];
        assert_eq!(soa.ttl(), 3);
        assert_eq!(soa.name().to_ascii(), "us-east-1.amazonaws.com.");
    }
}

#[cfg(test)]
mod properties {
    //! Arbitrary bytes read as a query give a query, a refusal no longer
    //! than themselves, or nothing; never a panic.

    use proptest::prelude::*;

    use super::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2048))]

        #[test]
        fn arbitrary_packets_never_amplify(packet in prop::collection::vec(any::<u8>(), 0..600)) {
            match parse(&packet) {
                Parsed::Refuse(answer, _) => prop_assert!(answer.len() <= packet.len()),
                Parsed::Query(query) => {
                    let answer = query.encode(&query.response(ResponseCode::ServFail), Some(query.udp_limit));
                    prop_assert!(answer.is_some_and(|a| a.len() <= query.udp_limit));
                }
                Parsed::Drop => {}
            }
        }

        #[test]
        fn queries_with_any_header_bits_and_counts_never_panic(
            header in prop::collection::vec(any::<u8>(), 12..=12),
            rest in prop::collection::vec(any::<u8>(), 0..64),
        ) {
            let mut packet = header;
            // A real question after it, so the counts are what varies.
            packet.extend_from_slice(&[1, b'a', 4, b't', b'e', b's', b't', 0, 0, 1, 0, 1]);
            packet.extend_from_slice(&rest);
            if let Parsed::Refuse(answer, _) = parse(&packet) {
                prop_assert!(answer.len() <= packet.len());
            }
        }
    }
}

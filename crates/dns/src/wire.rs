//! The allocation-free fast path for the commonest query: one question, no
//! compression, at most an OPT record. Anything else (or anything odd) makes
//! [`Question::parse`] return `None` and the request takes the general
//! hickory-proto path, which is the reference: `handler` tests check that
//! both produce the same answers.

use std::net::IpAddr;

/// The EDNS payload size we advertise to clients (both paths).
pub const OUR_PAYLOAD: u16 = 1232;

/// Most labels the fast path looks at; longer names take the general path.
const MAX_LABELS: usize = 12;
const TYPE_A: u16 = 1;
const TYPE_AAAA: u16 = 28;
const TYPE_OPT: u16 = 41;
const CLASS_IN: u16 = 1;

/// A parsed single-question query, borrowing the packet.
#[derive(Debug)]
pub struct Question<'a> {
    packet: &'a [u8],
    /// (start, len) of each label, in order.
    labels: [(u16, u8); MAX_LABELS],
    label_count: usize,
    /// End of qname + qtype + qclass.
    question_end: usize,
    pub qtype: u16,
    pub qclass: u16,
    /// The client's EDNS payload size, if it sent an OPT record.
    pub edns_payload: Option<u16>,
}

impl<'a> Question<'a> {
    /// Parses `packet` if it is a plain query the fast path can answer.
    pub fn parse(packet: &'a [u8]) -> Option<Self> {
        let header = packet.get(..12)?;
        // QR=0, opcode QUERY, TC=0; Z and rcode zero (AD and CD may be set).
        if header[2] & 0xfa != 0 || header[3] & 0x4f != 0 {
            return None;
        }
        let count = |i: usize| u16::from_be_bytes([header[i], header[i + 1]]);
        if count(4) != 1 || count(6) != 0 || count(8) != 0 || count(10) > 1 {
            return None;
        }
        let mut labels = [(0u16, 0u8); MAX_LABELS];
        let mut label_count = 0;
        let mut pos = 12;
        loop {
            let len = *packet.get(pos)?;
            if len == 0 {
                pos += 1;
                break;
            }
            if len > 63 || label_count == MAX_LABELS {
                return None; // a compression pointer, or too deep
            }
            labels[label_count] = (u16::try_from(pos + 1).ok()?, len);
            label_count += 1;
            pos += 1 + usize::from(len);
        }
        if pos - 12 > 255 {
            return None;
        }
        let fixed = packet.get(pos..pos + 4)?;
        let qtype = u16::from_be_bytes([fixed[0], fixed[1]]);
        let qclass = u16::from_be_bytes([fixed[2], fixed[3]]);
        let question_end = pos + 4;
        let mut edns_payload = None;
        if count(10) == 1 {
            // Only an OPT record: root name, type 41, version 0.
            let opt = packet.get(question_end..question_end + 11)?;
            if opt[0] != 0 || u16::from_be_bytes([opt[1], opt[2]]) != TYPE_OPT || opt[6] != 0 {
                return None;
            }
            let rdlen = usize::from(u16::from_be_bytes([opt[9], opt[10]]));
            if question_end + 11 + rdlen != packet.len() {
                return None;
            }
            edns_payload = Some(u16::from_be_bytes([opt[3], opt[4]]));
        } else if question_end != packet.len() {
            return None;
        }
        Some(Self { packet, labels, label_count, question_end, qtype, qclass, edns_payload })
    }

    /// The labels of the name, as sent (any case).
    pub fn labels(&self) -> impl DoubleEndedIterator<Item = &'a [u8]> + ExactSizeIterator + '_ {
        self.labels[..self.label_count].iter().map(|&(start, len)| {
            let start = usize::from(start);
            &self.packet[start..start + usize::from(len)]
        })
    }

    pub fn is_address_query(&self) -> bool {
        self.qclass == CLASS_IN && (self.qtype == TYPE_A || self.qtype == TYPE_AAAA)
    }

    /// Whether `ip` is of the family asked for.
    pub fn wants(&self, ip: &IpAddr) -> bool {
        match ip {
            IpAddr::V4(_) => self.qtype == TYPE_A,
            IpAddr::V6(_) => self.qtype == TYPE_AAAA,
        }
    }

    /// Writes an authoritative NOERROR answer with one A/AAAA record per
    /// address into `out`; `false` (and `out` unspecified) if there is no
    /// address or the answer would exceed `max_size`, so the general path
    /// adds the SOA or truncates properly.
    pub fn write_answer(
        &self,
        out: &mut Vec<u8>,
        addrs: impl Iterator<Item = IpAddr>,
        ttl: u32,
        recursion_available: bool,
        max_size: usize,
    ) -> bool {
        let request = self.packet;
        out.clear();
        out.extend_from_slice(&request[..2]); // ID
        // QR, AA, RD as asked; RA; CD as asked; NOERROR.
        out.push(0x84 | (request[2] & 0x01));
        out.push(if recursion_available { 0x80 } else { 0 } | (request[3] & 0x10));
        out.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, u8::from(self.edns_payload.is_some())]);
        out.extend_from_slice(&request[12..self.question_end]);
        let mut answers: u16 = 0;
        for ip in addrs {
            let ttl = ttl.to_be_bytes();
            // Owner: a pointer to the question name at offset 12.
            out.extend_from_slice(&[0xc0, 0x0c]);
            match ip {
                IpAddr::V4(v4) => {
                    out.extend_from_slice(&TYPE_A.to_be_bytes());
                    out.extend_from_slice(&CLASS_IN.to_be_bytes());
                    out.extend_from_slice(&ttl);
                    out.extend_from_slice(&[0, 4]);
                    out.extend_from_slice(&v4.octets());
                }
                IpAddr::V6(v6) => {
                    out.extend_from_slice(&TYPE_AAAA.to_be_bytes());
                    out.extend_from_slice(&CLASS_IN.to_be_bytes());
                    out.extend_from_slice(&ttl);
                    out.extend_from_slice(&[0, 16]);
                    out.extend_from_slice(&v6.octets());
                }
            }
            answers += 1;
            if answers == u16::MAX {
                return false;
            }
        }
        if answers == 0 {
            return false; // NODATA: the general path adds the SOA
        }
        out[6..8].copy_from_slice(&answers.to_be_bytes());
        if self.edns_payload.is_some() {
            // OPT: root, type 41, our payload size, no extended rcode/flags, no options.
            out.push(0);
            out.extend_from_slice(&TYPE_OPT.to_be_bytes());
            out.extend_from_slice(&OUR_PAYLOAD.to_be_bytes());
            out.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
        }
        out.len() <= max_size
    }
}

#[cfg(test)]
mod tests {
    use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query};
    use hickory_proto::rr::{Name, RecordType};

    use super::*;

    fn query(name: &str, qtype: RecordType, edns: bool) -> Vec<u8> {
        let mut m = Message::new(0x1234, MessageType::Query, OpCode::Query);
        m.metadata.recursion_desired = true;
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
        if edns {
            let mut e = Edns::new();
            e.set_max_payload(1400);
            m.set_edns(e);
        }
        m.to_vec().unwrap()
    }

    #[test]
    fn parses_plain_queries() {
        let bytes = query("Web.default.svc.cluster.local.", RecordType::A, false);
        let q = Question::parse(&bytes).unwrap();
        let labels: Vec<&[u8]> = q.labels().collect();
        assert_eq!(labels, vec![&b"Web"[..], b"default", b"svc", b"cluster", b"local"]);
        assert_eq!(q.qtype, 1);
        assert!(q.is_address_query());
        assert_eq!(q.edns_payload, None);
        let bytes = query("a.b.", RecordType::AAAA, true);
        assert_eq!(Question::parse(&bytes).unwrap().edns_payload, Some(1400));
    }

    #[test]
    fn odd_packets_take_the_general_path() {
        let ok = query("a.b.", RecordType::A, false);
        let mut response = ok.clone();
        response[2] |= 0x80;
        let mut two_questions = ok.clone();
        two_questions[5] = 2;
        let mut trailing = ok.clone();
        trailing.push(0);
        let mut pointer = ok[..12].to_vec();
        pointer.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1]);
        let deep = query(&"a.".repeat(MAX_LABELS + 1), RecordType::A, false);
        for bad in [&[][..], &ok[..11], &ok[..ok.len() - 1], &response, &two_questions, &trailing, &pointer, &deep] {
            assert!(Question::parse(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn answers_parse_back() {
        let bytes = query("WEB.default.svc.cluster.local.", RecordType::A, true);
        let q = Question::parse(&bytes).unwrap();
        let mut out = Vec::new();
        let ips: Vec<IpAddr> = vec!["9.251.0.1".parse().unwrap(), "9.251.0.2".parse().unwrap()];
        assert!(q.write_answer(&mut out, ips.iter().copied(), 5, true, 512));
        let m = Message::from_vec(&out).unwrap();
        assert_eq!(m.metadata.id, 0x1234);
        assert!(m.metadata.authoritative && m.metadata.recursion_desired && m.metadata.recursion_available);
        assert_eq!(m.metadata.message_type, MessageType::Response);
        assert_eq!(m.answers.len(), 2);
        assert!(m.answers[0].name.eq_case(&Name::from_ascii("WEB.default.svc.cluster.local.").unwrap()));
        assert_eq!(m.answers[1].ttl, 5);
        assert_eq!(m.edns.unwrap().max_payload(), OUR_PAYLOAD);
        assert!(!q.write_answer(&mut out, ips.iter().copied().cycle().take(100), 5, true, 512));
    }
}

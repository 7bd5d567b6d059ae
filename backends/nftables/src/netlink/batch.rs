//! Encoding of an nfnetlink batch of set-element messages (pure bytes, no IO).
//!
//! A batch is `BATCH_BEGIN, msg…, BATCH_END` sent in one `sendmsg`; the kernel
//! applies the messages as one transaction (all or nothing) and answers every
//! message flagged `NLM_F_ACK` with an ack or an error.

use std::mem::size_of;

const NLMSG_HDRLEN: usize = size_of::<libc::nlmsghdr>();
const NFGENMSG_LEN: usize = 4;
const NFNETLINK_V0: u8 = 0;
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;

pub(crate) const NFT_MSG_NEWSETELEM: u16 = 12;
pub(crate) const NFT_MSG_DELSETELEM: u16 = 14;
pub(crate) const NFT_MSG_GETGEN: u16 = 16;
pub(crate) const NFT_MSG_NEWGEN: u16 = 15;

const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_SET_ELEM_DATA: u16 = 2;
const NFTA_SET_ELEM_TIMEOUT: u16 = 4;
const NFTA_SET_ELEM_USERDATA: u16 = 6;
/// libnftnl's user-data TLV type of an element comment.
const NFTNL_UDATA_SET_ELEM_COMMENT: u8 = 0;
const NFTA_DATA_VALUE: u16 = 1;
pub(crate) const NFTA_GEN_ID: u16 = 1;
const NLA_F_NESTED: u16 = 0x8000;

/// A nested attribute's length is a u16, so one message carries at most ~64 KiB of
/// elements: a message takes at most 512 elements and about 48 KiB of them
/// (512 plain IPv6 grants are ~24 KiB; NAT elements with comments are larger).
pub const MAX_ELEMENTS_PER_MESSAGE: usize = 512;
const MAX_ELEMENT_BYTES_PER_MESSAGE: usize = 48 * 1024;

/// Which set a message addresses.
#[derive(Clone, Copy, Debug)]
pub struct SetTarget<'a> {
    pub family: u8,
    pub table: &'a str,
    pub set: &'a str,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ElemOp {
    Add,
    Delete,
}

/// One element: the key and, for adds, its timeout in milliseconds, map data
/// and comment (stored as nft stores it, so `nft list` shows it).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Element {
    pub key: Vec<u8>,
    pub timeout_ms: Option<u64>,
    pub data: Option<Vec<u8>>,
    pub comment: Option<String>,
}

impl Element {
    /// Upper bound of the element's encoded size.
    fn encoded_len(&self) -> usize {
        let padded = |n: usize| (n + 3) & !3;
        let nested = |n: usize| 4 + 4 + padded(n);
        let mut len = 4 + nested(self.key.len()) + 12;
        len += self.data.as_ref().map_or(0, |d| nested(d.len()));
        len += self.comment.as_ref().map_or(0, |c| 4 + padded(c.len() + 3));
        len
    }

    /// libnftnl's user data for a comment: type, length, NUL-terminated text.
    fn userdata(comment: &str) -> Vec<u8> {
        let text: Vec<u8> = comment.bytes().take(250).chain([0]).collect();
        let mut tlv = vec![NFTNL_UDATA_SET_ELEM_COMMENT, text.len() as u8];
        tlv.extend(text);
        tlv
    }
}

/// Splits elements into runs that fit one message.
fn message_chunks(elements: &[Element]) -> Vec<&[Element]> {
    let mut chunks = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, e) in elements.iter().enumerate() {
        let len = e.encoded_len();
        if i > start
            && (i - start == MAX_ELEMENTS_PER_MESSAGE
                || bytes + len > MAX_ELEMENT_BYTES_PER_MESSAGE)
        {
            chunks.push(&elements[start..i]);
            (start, bytes) = (i, 0);
        }
        bytes += len;
    }
    if start < elements.len() {
        chunks.push(&elements[start..]);
    }
    chunks
}

/// A batch being built. `seqs` lists the acked messages with a description used
/// in error messages.
#[derive(Debug)]
pub struct Batch {
    buf: Vec<u8>,
    next_seq: u32,
    begin_seq: u32,
    acked: Vec<(u32, String)>,
}

impl Batch {
    /// Starts a batch whose messages are numbered from `first_seq`.
    pub fn new(first_seq: u32) -> Batch {
        let mut b = Batch {
            buf: Vec::with_capacity(4096),
            next_seq: first_seq,
            begin_seq: first_seq,
            acked: Vec::new(),
        };
        b.control(NFNL_MSG_BATCH_BEGIN);
        b
    }

    /// Adds (or deletes) `elements` in `target`, split into as many messages as needed.
    pub fn set_elements(&mut self, op: ElemOp, target: SetTarget<'_>, elements: &[Element]) {
        for chunk in message_chunks(elements) {
            let (kind, flags, verb) = match op {
                // No NLM_F_EXCL: adding an element that exists is not an error.
                ElemOp::Add => (NFT_MSG_NEWSETELEM, libc::NLM_F_CREATE, "adding"),
                ElemOp::Delete => (NFT_MSG_DELSETELEM, 0, "deleting"),
            };
            let what = format!(
                "{verb} {} element(s) of set {} in table {}",
                chunk.len(),
                target.set,
                target.table
            );
            let start = self.begin_msg(kind, flags as u16, target.family, what);
            self.set_header(target);
            let list = self.begin_nested(NFTA_SET_ELEM_LIST_ELEMENTS);
            for e in chunk {
                let item = self.begin_nested(NFTA_LIST_ELEM);
                let key = self.begin_nested(NFTA_SET_ELEM_KEY);
                self.attr(NFTA_DATA_VALUE, &e.key);
                self.end_nested(key);
                if op == ElemOp::Add {
                    if let Some(data) = &e.data {
                        let nested = self.begin_nested(NFTA_SET_ELEM_DATA);
                        self.attr(NFTA_DATA_VALUE, data);
                        self.end_nested(nested);
                    }
                    if let Some(ms) = e.timeout_ms {
                        self.attr(NFTA_SET_ELEM_TIMEOUT, &ms.to_be_bytes());
                    }
                    if let Some(comment) = &e.comment {
                        self.attr(NFTA_SET_ELEM_USERDATA, &Element::userdata(comment));
                    }
                }
                self.end_nested(item);
            }
            self.end_nested(list);
            self.end_msg(start);
        }
    }

    /// Removes every element of `target` (DELSETELEM without an element list).
    pub fn flush_set(&mut self, target: SetTarget<'_>) {
        let what = format!("flushing set {} in table {}", target.set, target.table);
        let start = self.begin_msg(NFT_MSG_DELSETELEM, 0, target.family, what);
        self.set_header(target);
        self.end_msg(start);
    }

    /// Closes the batch; returns the bytes to send, the begin message's seq and the
    /// acked messages.
    pub fn finish(mut self) -> FinishedBatch {
        self.control(NFNL_MSG_BATCH_END);
        FinishedBatch {
            bytes: self.buf,
            begin_seq: self.begin_seq,
            acked: self.acked,
            next_seq: self.next_seq,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.acked.is_empty()
    }

    fn control(&mut self, kind: u16) {
        let seq = self.take_seq();
        let start = self.header(kind, libc::NLM_F_REQUEST as u16, seq);
        self.nfgen(libc::AF_UNSPEC as u8, NFNL_SUBSYS_NFTABLES);
        self.end_msg(start);
    }

    fn begin_msg(&mut self, kind: u16, flags: u16, family: u8, what: String) -> usize {
        let seq = self.take_seq();
        let flags = flags | libc::NLM_F_REQUEST as u16 | libc::NLM_F_ACK as u16;
        let start = self.header((NFNL_SUBSYS_NFTABLES << 8) | kind, flags, seq);
        self.nfgen(family, 0);
        self.acked.push((seq, what));
        start
    }

    fn set_header(&mut self, target: SetTarget<'_>) {
        self.attr_str(NFTA_SET_ELEM_LIST_TABLE, target.table);
        self.attr_str(NFTA_SET_ELEM_LIST_SET, target.set);
    }

    fn take_seq(&mut self) -> u32 {
        let s = self.next_seq;
        self.next_seq = self.next_seq.wrapping_add(1);
        s
    }

    fn header(&mut self, kind: u16, flags: u16, seq: u32) -> usize {
        let start = self.buf.len();
        self.buf.extend_from_slice(&0u32.to_ne_bytes()); // length, patched in end_msg
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        self.buf.extend_from_slice(&flags.to_ne_bytes());
        self.buf.extend_from_slice(&seq.to_ne_bytes());
        self.buf.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel fills it
        start
    }

    fn nfgen(&mut self, family: u8, res_id: u16) {
        self.buf.extend_from_slice(&[family, NFNETLINK_V0]);
        self.buf.extend_from_slice(&res_id.to_be_bytes());
    }

    fn end_msg(&mut self, start: usize) {
        let len = (self.buf.len() - start) as u32;
        self.buf[start..start + 4].copy_from_slice(&len.to_ne_bytes());
    }

    fn attr(&mut self, kind: u16, payload: &[u8]) {
        let len = (4 + payload.len()) as u16;
        self.buf.extend_from_slice(&len.to_ne_bytes());
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        self.buf.extend_from_slice(payload);
        self.pad();
    }

    fn attr_str(&mut self, kind: u16, s: &str) {
        let mut v = Vec::with_capacity(s.len() + 1);
        v.extend_from_slice(s.as_bytes());
        v.push(0);
        self.attr(kind, &v);
    }

    fn begin_nested(&mut self, kind: u16) -> usize {
        let start = self.buf.len();
        self.buf.extend_from_slice(&0u16.to_ne_bytes());
        self.buf
            .extend_from_slice(&(kind | NLA_F_NESTED).to_ne_bytes());
        start
    }

    fn end_nested(&mut self, start: usize) {
        let len = (self.buf.len() - start) as u16;
        self.buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
    }

    fn pad(&mut self) {
        let aligned = (self.buf.len() + 3) & !3;
        self.buf.resize(aligned, 0);
    }
}

/// A closed batch ready to send.
#[derive(Debug)]
pub struct FinishedBatch {
    pub bytes: Vec<u8>,
    pub begin_seq: u32,
    pub acked: Vec<(u32, String)>,
    pub next_seq: u32,
}

/// A GETGEN request (one message, not a batch): asks the ruleset generation id.
pub fn getgen_request(seq: u32) -> Vec<u8> {
    let mut b = Batch {
        buf: Vec::new(),
        next_seq: seq,
        begin_seq: seq,
        acked: Vec::new(),
    };
    let start = b.header(
        (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETGEN,
        libc::NLM_F_REQUEST as u16,
        seq,
    );
    b.nfgen(libc::AF_UNSPEC as u8, 0);
    b.end_msg(start);
    b.buf
}

/// One message of a kernel reply.
#[derive(Debug, PartialEq, Eq)]
pub enum Reply<'a> {
    /// NLMSG_ERROR: `errno` 0 is an ack; negative is the error of message `seq`.
    Ack { seq: u32, errno: i32 },
    /// Any other message, with its payload after the nfgenmsg header.
    Message {
        kind: u16,
        seq: u32,
        payload: &'a [u8],
    },
}

/// Splits a received datagram into messages.
pub fn parse_replies(mut buf: &[u8]) -> Vec<Reply<'_>> {
    let mut out = Vec::new();
    while buf.len() >= NLMSG_HDRLEN {
        let len = u32::from_ne_bytes(buf[0..4].try_into().unwrap()) as usize;
        if len < NLMSG_HDRLEN || len > buf.len() {
            break;
        }
        let kind = u16::from_ne_bytes(buf[4..6].try_into().unwrap());
        let seq = u32::from_ne_bytes(buf[8..12].try_into().unwrap());
        let body = &buf[NLMSG_HDRLEN..len];
        if kind == libc::NLMSG_ERROR as u16 && body.len() >= 4 + NLMSG_HDRLEN {
            // The echoed header carries the seq of the message this answers.
            let errno = i32::from_ne_bytes(body[0..4].try_into().unwrap());
            let orig_seq = u32::from_ne_bytes(body[12..16].try_into().unwrap());
            out.push(Reply::Ack {
                seq: orig_seq,
                errno,
            });
        } else if kind != libc::NLMSG_DONE as u16 && body.len() >= NFGENMSG_LEN {
            out.push(Reply::Message {
                kind,
                seq,
                payload: &body[NFGENMSG_LEN..],
            });
        }
        let aligned = (len + 3) & !3;
        buf = &buf[aligned.min(buf.len())..];
    }
    out
}

/// Finds attribute `kind` in a flat attribute list.
pub fn find_attr(mut attrs: &[u8], kind: u16) -> Option<&[u8]> {
    while attrs.len() >= 4 {
        let len = u16::from_ne_bytes([attrs[0], attrs[1]]) as usize;
        let k = u16::from_ne_bytes([attrs[2], attrs[3]]) & !NLA_F_NESTED;
        if len < 4 || len > attrs.len() {
            return None;
        }
        if k == kind {
            return Some(&attrs[4..len]);
        }
        let aligned = (len + 3) & !3;
        attrs = &attrs[aligned.min(attrs.len())..];
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u16_at(b: &[u8], i: usize) -> u16 {
        u16::from_ne_bytes([b[i], b[i + 1]])
    }
    fn u32_at(b: &[u8], i: usize) -> u32 {
        u32::from_ne_bytes(b[i..i + 4].try_into().unwrap())
    }

    #[test]
    fn empty_batch_is_begin_and_end() {
        let f = Batch::new(7).finish();
        assert_eq!(f.bytes.len(), 2 * 20);
        assert_eq!(u16_at(&f.bytes, 4), 0x10);
        assert_eq!(u32_at(&f.bytes, 8), 7);
        assert_eq!(&f.bytes[16..20], &[0, 0, 0, 10]); // AF_UNSPEC, v0, res_id = nftables (BE)
        assert_eq!(u16_at(&f.bytes, 24), 0x11);
        assert_eq!(u32_at(&f.bytes, 28), 8);
        assert!(f.acked.is_empty());
        assert_eq!(f.next_seq, 9);
    }

    #[test]
    fn element_message_layout_matches_nft() {
        let mut b = Batch::new(1);
        let target = SetTarget {
            family: 1,
            table: "t",
            set: "s",
        };
        b.set_elements(
            ElemOp::Add,
            target,
            &[Element {
                key: vec![10, 0, 0, 1, 6, 0, 0, 0, 0, 22, 0, 0],
                timeout_ms: Some(3000),
                ..Element::default()
            }],
        );
        let f = b.finish();
        let m = &f.bytes[20..];
        let len = u32_at(m, 0) as usize;
        assert_eq!(u16_at(m, 4), (10 << 8) | 12);
        let flags = u16_at(m, 6);
        assert_eq!(
            flags as i32,
            libc::NLM_F_REQUEST | libc::NLM_F_ACK | libc::NLM_F_CREATE
        );
        assert_eq!(m[16], 1); // NFPROTO_INET
        let attrs = &m[20..len];
        assert_eq!(find_attr(attrs, 1), Some(&b"t\0"[..]));
        assert_eq!(find_attr(attrs, 2), Some(&b"s\0"[..]));
        let list = find_attr(attrs, 3).unwrap();
        let elem = find_attr(list, 1).unwrap();
        let key = find_attr(find_attr(elem, 1).unwrap(), 1).unwrap();
        assert_eq!(key, &[10, 0, 0, 1, 6, 0, 0, 0, 0, 22, 0, 0]);
        assert_eq!(find_attr(elem, 4).unwrap(), &3000u64.to_be_bytes());
        assert_eq!(f.acked.len(), 1);
        assert!(f.acked[0].1.contains("adding 1 element(s) of set s"));
        assert_eq!(len % 4, 0);
    }

    #[test]
    fn large_lists_are_split_into_several_messages() {
        let mut b = Batch::new(1);
        let target = SetTarget {
            family: 1,
            table: "t",
            set: "s",
        };
        let elems = vec![
            Element {
                key: vec![0; 24],
                timeout_ms: Some(1),
                ..Element::default()
            };
            MAX_ELEMENTS_PER_MESSAGE * 2 + 1
        ];
        b.set_elements(ElemOp::Delete, target, &elems);
        assert_eq!(b.finish().acked.len(), 3);
        // Large NAT elements: split by size too, every message below 64 KiB.
        let big = Element {
            key: vec![0; 40],
            timeout_ms: Some(1),
            data: Some(vec![0; 16]),
            comment: Some("c".repeat(100)),
        };
        let mut b = Batch::new(1);
        b.set_elements(ElemOp::Add, target, &vec![big; 500]);
        let f = b.finish();
        assert!(f.acked.len() >= 2, "{}", f.acked.len());
        let mut rest = &f.bytes[..];
        while rest.len() >= 4 {
            let len = u32_at(rest, 0) as usize;
            assert!(len < 65536, "{len}");
            rest = &rest[len..];
        }
    }

    #[test]
    fn map_data_and_comment_are_encoded_like_nft() {
        let mut b = Batch::new(1);
        let target = SetTarget {
            family: 1,
            table: "t",
            set: "m",
        };
        let e = Element {
            key: vec![1; 12],
            timeout_ms: Some(1000),
            data: Some(vec![0, 22]),
            comment: Some("ab".into()),
        };
        b.set_elements(ElemOp::Add, target, std::slice::from_ref(&e));
        b.set_elements(ElemOp::Delete, target, &[e]);
        let f = b.finish();
        let add = &f.bytes[20..];
        let elem = find_attr(find_attr(&add[20..u32_at(add, 0) as usize], 3).unwrap(), 1).unwrap();
        assert_eq!(
            find_attr(find_attr(elem, 2).unwrap(), 1),
            Some(&[0, 22][..])
        );
        assert_eq!(find_attr(elem, 6), Some(&[0, 3, b'a', b'b', 0][..]));
        let del = &add[u32_at(add, 0) as usize..];
        let elem = find_attr(find_attr(&del[20..u32_at(del, 0) as usize], 3).unwrap(), 1).unwrap();
        assert!(
            find_attr(elem, 2).is_none()
                && find_attr(elem, 6).is_none()
                && find_attr(elem, 4).is_none(),
            "a delete carries the key only"
        );
    }

    #[test]
    fn parses_acks_and_errors() {
        // NLMSG_ERROR with errno -2 for seq 5, then an ack for seq 6.
        let mut buf = Vec::new();
        for (seq, errno) in [(5u32, -2i32), (6, 0)] {
            buf.extend_from_slice(&36u32.to_ne_bytes());
            buf.extend_from_slice(&(libc::NLMSG_ERROR as u16).to_ne_bytes());
            buf.extend_from_slice(&0u16.to_ne_bytes());
            buf.extend_from_slice(&seq.to_ne_bytes());
            buf.extend_from_slice(&0u32.to_ne_bytes());
            buf.extend_from_slice(&errno.to_ne_bytes());
            buf.extend_from_slice(&[0; 8]);
            buf.extend_from_slice(&seq.to_ne_bytes());
            buf.extend_from_slice(&[0; 4]);
        }
        assert_eq!(
            parse_replies(&buf),
            vec![
                Reply::Ack { seq: 5, errno: -2 },
                Reply::Ack { seq: 6, errno: 0 }
            ]
        );
    }
}

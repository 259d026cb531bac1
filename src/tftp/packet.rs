//! The TFTP wire format (RFC 1350 with the option extension of RFC 2347): typed packets,
//! decoding that never panics on any input, and encoders that append to a caller's buffer
//! so the hot path allocates nothing.

use std::fmt;

pub const RRQ: u16 = 1;
pub const WRQ: u16 = 2;
pub const DATA: u16 = 3;
pub const ACK: u16 = 4;
pub const ERROR: u16 = 5;
pub const OACK: u16 = 6;

/// Longest option name or value we accept; RFC 2347 options are short ASCII words.
const MAX_OPTION_LEN: usize = 64;
/// Most options kept from one request (more are a malformed or hostile request).
const MAX_OPTIONS: usize = 16;

/// Error codes (RFC 1350 section 5, RFC 2347 for 8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum ErrorCode {
    NotDefined = 0,
    FileNotFound = 1,
    AccessViolation = 2,
    DiskFull = 3,
    IllegalOperation = 4,
    UnknownTid = 5,
    FileExists = 6,
    NoSuchUser = 7,
    /// The client refuses the options (or, like OVMF after a size probe, ends the transfer).
    OptionsRefused = 8,
}

impl ErrorCode {
    pub fn from_u16(code: u16) -> Option<ErrorCode> {
        use ErrorCode::*;
        Some(match code {
            0 => NotDefined,
            1 => FileNotFound,
            2 => AccessViolation,
            3 => DiskFull,
            4 => IllegalOperation,
            5 => UnknownTid,
            6 => FileExists,
            7 => NoSuchUser,
            8 => OptionsRefused,
            _ => return None,
        })
    }
}

/// Transfer mode of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Octet,
    /// Text with CR LF line ends on the wire (RFC 764).
    Netascii,
    /// Obsolete (RFC 1350 says so); refused.
    Mail,
}

/// A read or write request. The file name is kept as bytes: the path layer decides what is
/// acceptable, and the log shows it lossily.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub filename: Vec<u8>,
    pub mode: Mode,
    /// Options in request order, names lower-cased; values as sent.
    pub options: Vec<(String, String)>,
}

impl Request {
    /// The file name for logs and lifecycle messages (never used to open anything).
    pub fn display_name(&self) -> String {
        String::from_utf8_lossy(&self.filename).into_owned()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet<'a> {
    Rrq(Request),
    Wrq(Request),
    Data { block: u16, data: &'a [u8] },
    Ack(u16),
    Error { code: u16, message: String },
    Oack(Vec<(String, String)>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseError {
    TooShort,
    UnknownOpcode(u16),
    /// A string field without its terminating NUL.
    Unterminated,
    EmptyFilename,
    BadMode,
    /// An option name without a value, or an oversized or repeated-to-excess option list.
    BadOptions,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParseError::TooShort => write!(f, "datagram too short"),
            ParseError::UnknownOpcode(op) => write!(f, "unknown opcode {op}"),
            ParseError::Unterminated => write!(f, "string field not NUL-terminated"),
            ParseError::EmptyFilename => write!(f, "empty file name"),
            ParseError::BadMode => write!(f, "unknown transfer mode"),
            ParseError::BadOptions => write!(f, "malformed options"),
        }
    }
}

impl std::error::Error for ParseError {}

/// Splits `bytes` into NUL-terminated fields; the last field must be terminated too.
fn fields(bytes: &[u8]) -> Result<Vec<&[u8]>, ParseError> {
    if bytes.is_empty() {
        return Ok(Vec::new());
    }
    if bytes.last() != Some(&0) {
        return Err(ParseError::Unterminated);
    }
    Ok(bytes[..bytes.len() - 1].split(|&b| b == 0).collect())
}

fn ascii_lower(field: &[u8]) -> Result<String, ParseError> {
    if field.len() > MAX_OPTION_LEN || !field.is_ascii() {
        return Err(ParseError::BadOptions);
    }
    Ok(String::from_utf8_lossy(field).to_ascii_lowercase())
}

/// Option name/value pairs; names lower-cased. A trailing name without a value is an error.
fn options(fields: &[&[u8]]) -> Result<Vec<(String, String)>, ParseError> {
    if !fields.len().is_multiple_of(2) || fields.len() / 2 > MAX_OPTIONS {
        return Err(ParseError::BadOptions);
    }
    fields
        .chunks_exact(2)
        .map(|kv| {
            let name = ascii_lower(kv[0])?;
            if kv[1].len() > MAX_OPTION_LEN || !kv[1].is_ascii() {
                return Err(ParseError::BadOptions);
            }
            Ok((name, String::from_utf8_lossy(kv[1]).into_owned()))
        })
        .collect()
}

fn request(body: &[u8]) -> Result<Request, ParseError> {
    let f = fields(body)?;
    let (name, mode) = match f.as_slice() {
        [name, mode, ..] => (*name, *mode),
        _ => return Err(ParseError::Unterminated),
    };
    if name.is_empty() {
        return Err(ParseError::EmptyFilename);
    }
    let mode = match mode.to_ascii_lowercase().as_slice() {
        b"octet" => Mode::Octet,
        b"netascii" => Mode::Netascii,
        b"mail" => Mode::Mail,
        _ => return Err(ParseError::BadMode),
    };
    // Some clients pad the request with extra NULs: an empty trailing field is not an option.
    let mut rest = &f[2..];
    while let Some((last, init)) = rest.split_last() {
        if !last.is_empty() {
            break;
        }
        rest = init;
    }
    Ok(Request {
        filename: name.to_vec(),
        mode,
        options: options(rest)?,
    })
}

/// Decodes one datagram. Any input gives a packet or an error, never a panic.
pub fn parse(bytes: &[u8]) -> Result<Packet<'_>, ParseError> {
    if bytes.len() < 2 {
        return Err(ParseError::TooShort);
    }
    let op = u16::from_be_bytes([bytes[0], bytes[1]]);
    let body = &bytes[2..];
    let number = || -> Result<u16, ParseError> {
        match body {
            [a, b, ..] => Ok(u16::from_be_bytes([*a, *b])),
            _ => Err(ParseError::TooShort),
        }
    };
    match op {
        RRQ => Ok(Packet::Rrq(request(body)?)),
        WRQ => Ok(Packet::Wrq(request(body)?)),
        DATA => Ok(Packet::Data {
            block: number()?,
            data: &body[2..],
        }),
        ACK => Ok(Packet::Ack(number()?)),
        ERROR => {
            let code = number()?;
            // A missing NUL after the message is common enough to accept.
            let msg = &body[2..];
            let msg = msg.split(|&b| b == 0).next().unwrap_or_default();
            Ok(Packet::Error {
                code,
                message: String::from_utf8_lossy(msg).into_owned(),
            })
        }
        OACK => Ok(Packet::Oack(options(&fields(body)?)?)),
        other => Err(ParseError::UnknownOpcode(other)),
    }
}

/// Appends an ERROR packet. `message` must not name server paths (callers pass constants).
pub fn encode_error(code: ErrorCode, message: &str, out: &mut Vec<u8>) {
    out.extend_from_slice(&ERROR.to_be_bytes());
    out.extend_from_slice(&(code as u16).to_be_bytes());
    out.extend(message.bytes().filter(|&b| b != 0));
    out.push(0);
}

/// Appends an OACK packet with `options` (name, value) in order.
pub fn encode_oack(options: &[(&str, String)], out: &mut Vec<u8>) {
    out.extend_from_slice(&OACK.to_be_bytes());
    for (name, value) in options {
        out.extend_from_slice(name.as_bytes());
        out.push(0);
        out.extend_from_slice(value.as_bytes());
        out.push(0);
    }
}

/// The 4-byte header of DATA block `block`; the payload follows it in the datagram.
pub fn data_header(block: u16) -> [u8; 4] {
    let b = block.to_be_bytes();
    [0, DATA as u8, b[0], b[1]]
}

/// Appends an ACK packet.
pub fn encode_ack(block: u16, out: &mut Vec<u8>) {
    out.extend_from_slice(&ACK.to_be_bytes());
    out.extend_from_slice(&block.to_be_bytes());
}

/// Appends a request (RRQ or WRQ) in octet mode; used by tests and the benchmark tools.
pub fn encode_request(op: u16, filename: &[u8], options: &[(&str, &str)], out: &mut Vec<u8>) {
    out.extend_from_slice(&op.to_be_bytes());
    out.extend_from_slice(filename);
    out.push(0);
    out.extend_from_slice(b"octet\0");
    for (name, value) in options {
        out.extend_from_slice(name.as_bytes());
        out.push(0);
        out.extend_from_slice(value.as_bytes());
        out.push(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rrq(name: &str, mode: &str, opts: &[(&str, &str)]) -> Vec<u8> {
        let mut p = vec![0, 1];
        p.extend_from_slice(name.as_bytes());
        p.push(0);
        p.extend_from_slice(mode.as_bytes());
        p.push(0);
        for (k, v) in opts {
            p.extend_from_slice(k.as_bytes());
            p.push(0);
            p.extend_from_slice(v.as_bytes());
            p.push(0);
        }
        p
    }

    #[test]
    fn parses_requests_with_options() {
        let p = rrq(
            "snponly.efi",
            "OCTET",
            &[("BlkSize", "1468"), ("tsize", "0")],
        );
        let Packet::Rrq(r) = parse(&p).unwrap() else {
            panic!("not an RRQ")
        };
        assert_eq!(r.filename, b"snponly.efi");
        assert_eq!(r.mode, Mode::Octet);
        assert_eq!(
            r.options,
            vec![
                ("blksize".to_string(), "1468".to_string()),
                ("tsize".to_string(), "0".to_string())
            ]
        );
        let mut w = rrq("x", "netascii", &[]);
        w[1] = 2;
        assert!(matches!(parse(&w), Ok(Packet::Wrq(r)) if r.mode == Mode::Netascii));
        // Trailing padding NULs are tolerated.
        let mut padded = rrq("x", "octet", &[]);
        padded.extend_from_slice(&[0, 0]);
        assert!(matches!(parse(&padded), Ok(Packet::Rrq(r)) if r.options.is_empty()));
    }

    #[test]
    fn rejects_malformed_requests() {
        assert_eq!(parse(&[]), Err(ParseError::TooShort));
        assert_eq!(parse(&[0]), Err(ParseError::TooShort));
        assert_eq!(parse(&[0, 9, 1]), Err(ParseError::UnknownOpcode(9)));
        assert_eq!(parse(b"\0\x01file\0oct"), Err(ParseError::Unterminated));
        assert_eq!(parse(b"\0\x01file"), Err(ParseError::Unterminated));
        assert_eq!(parse(b"\0\x01\0octet\0"), Err(ParseError::EmptyFilename));
        assert_eq!(parse(b"\0\x01f\0binary\0"), Err(ParseError::BadMode));
        assert_eq!(
            parse(b"\0\x01f\0octet\0blksize\0"),
            Err(ParseError::BadOptions),
            "an option without a value"
        );
        let many: Vec<(&str, &str)> = (0..17).map(|_| ("x", "1")).collect();
        assert_eq!(
            parse(&rrq("f", "octet", &many)),
            Err(ParseError::BadOptions)
        );
        let long = "9".repeat(65);
        assert_eq!(
            parse(&rrq("f", "octet", &[("blksize", &long)])),
            Err(ParseError::BadOptions)
        );
    }

    #[test]
    fn parses_acks_errors_data_oack() {
        assert_eq!(parse(&[0, 4, 0xff, 0xfe]), Ok(Packet::Ack(65534)));
        assert_eq!(parse(&[0, 4, 1]), Err(ParseError::TooShort));
        assert_eq!(
            parse(b"\0\x05\0\x08abort\0"),
            Ok(Packet::Error {
                code: 8,
                message: "abort".into()
            })
        );
        assert_eq!(
            parse(b"\0\x05\0\x01no nul"),
            Ok(Packet::Error {
                code: 1,
                message: "no nul".into()
            })
        );
        assert_eq!(
            parse(&[0, 3, 0, 7, 1, 2, 3]),
            Ok(Packet::Data {
                block: 7,
                data: &[1, 2, 3]
            })
        );
        assert_eq!(
            parse(b"\0\x06tsize\x0042\0"),
            Ok(Packet::Oack(vec![("tsize".into(), "42".into())]))
        );
    }

    #[test]
    fn encodings_round_trip() {
        let mut out = Vec::new();
        encode_error(ErrorCode::FileNotFound, "file not found", &mut out);
        assert_eq!(
            parse(&out),
            Ok(Packet::Error {
                code: 1,
                message: "file not found".into()
            })
        );
        out.clear();
        encode_oack(
            &[("blksize", "1468".into()), ("tsize", "123".into())],
            &mut out,
        );
        assert_eq!(out, b"\0\x06blksize\x001468\0tsize\x00123\0");
        out.clear();
        encode_ack(65535, &mut out);
        assert_eq!(parse(&out), Ok(Packet::Ack(65535)));
        assert_eq!(data_header(0x0102), [0, 3, 1, 2]);
        out.clear();
        encode_request(RRQ, b"a/b", &[("windowsize", "16")], &mut out);
        assert!(
            matches!(parse(&out), Ok(Packet::Rrq(r)) if r.filename == b"a/b" && r.options.len() == 1)
        );
        assert_eq!(ErrorCode::from_u16(8), Some(ErrorCode::OptionsRefused));
        assert_eq!(ErrorCode::from_u16(9), None);
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        // A small xorshift: deterministic, no dependency.
        let mut s: u64 = 0x9e3779b97f4a7c15;
        let mut next = move || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s
        };
        let seed = rrq("ipxe/snponly.efi", "octet", &[("blksize", "1468")]);
        for _ in 0..50_000 {
            let len = (next() % 80) as usize;
            let mut p: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            if next() % 2 == 0 {
                p = seed.clone();
                let at = (next() as usize) % p.len();
                p[at] = next() as u8;
                p.truncate((next() as usize) % (p.len() + 1));
            }
            if p.len() >= 2 && next() % 3 == 0 {
                p[0] = 0;
                p[1] = (next() % 8) as u8;
            }
            let _ = parse(&p);
        }
    }
}

//! Typed reading of the positioned YAML tree. Every problem is recorded in the diagnostics
//! and reading goes on, so one run reports wrong types, bad values and unknown keys together.

use std::net::{IpAddr, Ipv4Addr};

use ipnet::Ipv4Net;

use super::diag::{Diagnostics, did_you_mean};
use super::model::At;
use super::types::{Mac, Pos, parse_duration_secs};
use super::yaml::{Key, Node, Value, raw_text};

/// Reading context: the source (for raw scalar text) and the diagnostics being collected.
pub struct Cx<'s> {
    pub src: &'s str,
    pub diags: Diagnostics,
}

/// A value type that can be read from one YAML node. `Err` is the message, reported at the
/// node's position by the caller.
pub trait FromYaml: Sized {
    fn from_yaml(node: &Node, cx: &Cx) -> Result<Self, String>;
}

/// The text of a scalar as written. Numbers keep their spelling (`1.30`, not `1.3`).
pub fn scalar_text(node: &Node, cx: &Cx) -> Result<String, String> {
    match &node.value {
        Value::Str(s) => Ok(s.clone()),
        Value::Int(_) | Value::Float(_) | Value::Bool(_) => Ok(raw_text(cx.src, &node.pos)
            .map(str::to_string)
            .unwrap_or_else(|| match &node.value {
                Value::Int(i) => i.to_string(),
                Value::Float(f) => f.to_string(),
                Value::Bool(b) => b.to_string(),
                _ => unreachable!(),
            })),
        other => Err(format!("expected a string, found {}", other.kind())),
    }
}

impl FromYaml for String {
    fn from_yaml(node: &Node, cx: &Cx) -> Result<Self, String> {
        scalar_text(node, cx)
    }
}

impl FromYaml for std::path::PathBuf {
    fn from_yaml(node: &Node, cx: &Cx) -> Result<Self, String> {
        scalar_text(node, cx).map(Into::into)
    }
}

macro_rules! int_from_yaml {
    ($($t:ty),*) => {$(
        impl FromYaml for $t {
            fn from_yaml(node: &Node, cx: &Cx) -> Result<Self, String> {
                match &node.value {
                    Value::Int(i) => <$t>::try_from(*i).map_err(|_| {
                        format!("expected an integer from {} to {}, found {i}", <$t>::MIN, <$t>::MAX)
                    }),
                    Value::Str(_) | Value::Float(_) | Value::Bool(_) => Err(format!(
                        "expected an integer, found `{}`",
                        scalar_text(node, cx).unwrap_or_default()
                    )),
                    other => Err(format!("expected an integer, found {}", other.kind())),
                }
            }
        }
    )*};
}
int_from_yaml!(u16, u32);

impl FromYaml for bool {
    fn from_yaml(node: &Node, cx: &Cx) -> Result<Self, String> {
        match &node.value {
            Value::Bool(b) => Ok(*b),
            Value::Str(_) | Value::Int(_) | Value::Float(_) => Err(format!(
                "expected true or false, found `{}`",
                scalar_text(node, cx).unwrap_or_default()
            )),
            other => Err(format!("expected true or false, found {}", other.kind())),
        }
    }
}

/// Parses a scalar's text with `FromStr`, wording the error as "invalid <what> `text`".
fn parse_scalar<T: std::str::FromStr>(node: &Node, cx: &Cx, what: &str) -> Result<T, String> {
    let text = scalar_text(node, cx)
        .map_err(|_| format!("expected {what}, found {}", node.value.kind()))?;
    text.trim()
        .parse()
        .map_err(|_| format!("invalid {what} `{text}`"))
}

impl FromYaml for Ipv4Addr {
    fn from_yaml(node: &Node, cx: &Cx) -> Result<Self, String> {
        parse_scalar(node, cx, "IPv4 address")
    }
}

impl FromYaml for IpAddr {
    fn from_yaml(node: &Node, cx: &Cx) -> Result<Self, String> {
        parse_scalar(node, cx, "IP address")
    }
}

impl FromYaml for Ipv4Net {
    /// A network in CIDR form; host bits must be zero so the operator's intent is unambiguous.
    fn from_yaml(node: &Node, cx: &Cx) -> Result<Self, String> {
        let net: Ipv4Net = parse_scalar(node, cx, "CIDR")?;
        if net.addr() != net.network() {
            return Err(format!(
                "invalid CIDR `{net}`: host bits are set (did you mean {}?)",
                net.trunc()
            ));
        }
        Ok(net)
    }
}

impl FromYaml for Mac {
    fn from_yaml(node: &Node, cx: &Cx) -> Result<Self, String> {
        scalar_text(node, cx)
            .map_err(|_| {
                format!(
                    "invalid MAC address: expected a string, found {}",
                    node.value.kind()
                )
            })?
            .parse()
    }
}

/// A duration written as seconds or `30m`/`12h`/`1d`, stored in seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seconds(pub u32);

impl FromYaml for Seconds {
    fn from_yaml(node: &Node, cx: &Cx) -> Result<Self, String> {
        let text =
            scalar_text(node, cx).map_err(|e| format!("{e} (a duration such as 3600 or 12h)"))?;
        let secs = parse_duration_secs(&text)?;
        u32::try_from(secs)
            .map(Seconds)
            .map_err(|_| format!("duration `{text}` is too large"))
    }
}

/// Implements `FromYaml` for a plain enum from its kebab-case spellings.
macro_rules! enum_from_yaml {
    ($t:ty, $what:literal, { $($name:literal => $v:expr),+ $(,)? }) => {
        impl $crate::desc::read::FromYaml for $t {
            fn from_yaml(node: &$crate::desc::yaml::Node, cx: &$crate::desc::read::Cx) -> Result<Self, String> {
                const NAMES: &[&str] = &[$($name),+];
                let text = $crate::desc::read::scalar_text(node, cx)
                    .map_err(|_| format!("expected {} ({}), found {}", $what, NAMES.join(" | "), node.value.kind()))?;
                match text.as_str() {
                    $($name => Ok($v),)+
                    other => Err(match $crate::desc::diag::did_you_mean(other, NAMES) {
                        Some(s) => format!("invalid {} `{other}`: expected one of {} (did you mean `{s}`?)", $what, NAMES.join(", ")),
                        None => format!("invalid {} `{other}`: expected one of {}", $what, NAMES.join(", ")),
                    }),
                }
            }
        }
    };
}
pub(crate) use enum_from_yaml;

impl Cx<'_> {
    /// Reads a node as `T`, recording the error at the node on failure.
    pub fn read<T: FromYaml>(&mut self, node: &Node) -> Option<At<T>> {
        match T::from_yaml(node, self) {
            Ok(v) => Some(At::new(v, node.pos)),
            Err(msg) => {
                self.diags.error(node.pos, msg);
                None
            }
        }
    }

    /// Reads a list of `T`; a single scalar is not silently promoted to a list.
    pub fn read_list<T: FromYaml>(&mut self, node: &Node, what: &str) -> Vec<At<T>> {
        match &node.value {
            Value::Seq(items) => items.iter().filter_map(|n| self.read(n)).collect(),
            Value::Null => Vec::new(),
            other => {
                self.diags.error(
                    node.pos,
                    format!("expected a list of {what}, found {}", other.kind()),
                );
                Vec::new()
            }
        }
    }

    /// Runs an extra check on a value that was read, recording its error at the value.
    pub fn check<T>(&mut self, v: &At<T>, f: impl FnOnce(&T) -> Result<(), String>) {
        if let Err(msg) = f(&v.value) {
            self.diags.error(v.pos, msg);
        }
    }
}

/// One YAML mapping being read. Remembers which keys were asked for, so that `finish`
/// can report the rest as unknown with a did-you-mean from the asked ones.
pub struct Section<'n> {
    name: String,
    pos: Pos,
    entries: &'n [(Key, Node)],
    asked: Vec<&'static str>,
}

impl<'n> Section<'n> {
    /// A mapping node named `name` (for messages), introduced at `pos`. A missing or null
    /// node reads as an empty mapping; any other kind is an error and reads as empty.
    pub fn new(cx: &mut Cx, name: impl Into<String>, pos: Pos, node: Option<&'n Node>) -> Self {
        let name = name.into();
        let entries: &'n [(Key, Node)] = match node.map(|n| &n.value) {
            Some(Value::Map(entries)) => entries,
            None | Some(Value::Null) => &[],
            Some(other) => {
                cx.diags.error(
                    node.map(|n| n.pos).unwrap_or(pos),
                    format!("expected a mapping for `{name}`, found {}", other.kind()),
                );
                &[]
            }
        };
        Section {
            name,
            pos,
            entries,
            asked: Vec::new(),
        }
    }

    pub fn pos(&self) -> Pos {
        self.pos
    }

    /// The node under `key`, if written (null counts as not written).
    pub fn get(&mut self, key: &'static str) -> Option<&'n Node> {
        self.asked.push(key);
        self.entries
            .iter()
            .find(|(k, _)| k.name == key)
            .map(|(_, n)| n)
            .filter(|n| !matches!(n.value, Value::Null))
    }

    /// Where `key` was written, or this section's own position.
    pub fn key_pos(&self, key: &str) -> Pos {
        self.entries
            .iter()
            .find(|(k, _)| k.name == key)
            .map(|(k, _)| k.pos)
            .unwrap_or(self.pos)
    }

    /// A required value; its absence is reported at this section.
    pub fn req<T: FromYaml>(&mut self, cx: &mut Cx, key: &'static str) -> Option<At<T>> {
        match self.get(key) {
            Some(node) => cx.read(node),
            None => {
                let msg = format!("missing required key `{key}` in `{}`", self.name);
                cx.diags.error(self.pos, msg);
                None
            }
        }
    }

    /// An optional value; `None` when absent or invalid (the error is recorded).
    pub fn opt<T: FromYaml>(&mut self, cx: &mut Cx, key: &'static str) -> Option<At<T>> {
        self.get(key).and_then(|node| cx.read(node))
    }

    /// A value with a default, used when absent or invalid (the error is recorded).
    pub fn or<T: FromYaml>(&mut self, cx: &mut Cx, key: &'static str, default: T) -> At<T> {
        self.opt(cx, key)
            .unwrap_or(At::new(default, Pos::default()))
    }

    pub fn list<T: FromYaml>(&mut self, cx: &mut Cx, key: &'static str, what: &str) -> Vec<At<T>> {
        match self.get(key) {
            Some(node) => cx.read_list(node, what),
            None => Vec::new(),
        }
    }

    /// A nested mapping under `key`.
    pub fn section(&mut self, cx: &mut Cx, key: &'static str) -> Section<'n> {
        let node = self.get(key);
        let pos = self.key_pos(key);
        let name = if self.name.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.name)
        };
        Section::new(cx, name, pos, node)
    }

    /// Reports every key that was not asked for, suggesting the closest known one.
    /// Consumes the entries, so calling it twice reports nothing new.
    pub fn finish(&mut self, cx: &mut Cx) {
        for (key, _) in std::mem::take(&mut self.entries) {
            if self.asked.contains(&key.name.as_str()) {
                continue;
            }
            let place = if self.name.is_empty() {
                "at the top level".to_string()
            } else {
                format!("in `{}`", self.name)
            };
            let msg = match did_you_mean(&key.name, &self.asked) {
                Some(s) => format!("unknown key `{}` {place} (did you mean `{s}`?)", key.name),
                None => format!(
                    "unknown key `{}` {place}; known keys: {}",
                    key.name,
                    self.asked.join(", ")
                ),
            };
            cx.diags.error(key.pos, msg);
        }
    }
}

//! A YAML tree that remembers where every key and value was written. serde-saphyr does the
//! parsing; we keep our own tree so that validation can report every problem at once instead
//! of stopping at the first type mismatch, as a direct serde derive would.

use serde::Deserialize;
use serde::de::{Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::{Location, Spanned};

use super::types::Pos;

#[derive(Debug, Clone)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i128),
    Float(f64),
    Str(String),
    Seq(Vec<Node>),
    Map(Vec<(Key, Node)>),
}

#[derive(Debug, Clone)]
pub struct Node {
    pub value: Value,
    pub pos: Pos,
}

#[derive(Debug, Clone)]
pub struct Key {
    pub name: String,
    pub pos: Pos,
}

impl Value {
    /// What the operator wrote, in words, for "expected X, found Y" errors.
    pub fn kind(&self) -> &'static str {
        match self {
            Value::Null => "nothing (null)",
            Value::Bool(_) => "a boolean",
            Value::Int(_) => "an integer",
            Value::Float(_) => "a number",
            Value::Str(_) => "a string",
            Value::Seq(_) => "a list",
            Value::Map(_) => "a mapping",
        }
    }
}

fn pos_of(loc: &Location) -> Pos {
    let span = loc.span();
    Pos {
        line: loc.line() as u32,
        col: loc.column() as u32,
        offset: span.byte_offset().unwrap_or(0) as usize,
        len: span.byte_len().unwrap_or(0) as usize,
    }
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = Spanned::<Value>::deserialize(d)?;
        Ok(Node {
            pos: pos_of(&s.referenced),
            value: s.value,
        })
    }
}

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = Spanned::<Value>::deserialize(d)?;
        let name = match s.value {
            Value::Str(s) => s,
            Value::Int(i) => i.to_string(),
            Value::Bool(b) => b.to_string(),
            Value::Float(f) => f.to_string(),
            Value::Null => "null".into(),
            Value::Seq(_) | Value::Map(_) => {
                return Err(serde::de::Error::custom(
                    "a mapping key must be a plain scalar",
                ));
            }
        };
        Ok(Key {
            name,
            pos: pos_of(&s.referenced),
        })
    }
}

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Value;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("any YAML value")
            }
            fn visit_unit<E>(self) -> Result<Value, E> {
                Ok(Value::Null)
            }
            fn visit_none<E>(self) -> Result<Value, E> {
                Ok(Value::Null)
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
                Value::deserialize(d)
            }
            fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
                Ok(Value::Bool(v))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
                Ok(Value::Int(v.into()))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
                Ok(Value::Int(v.into()))
            }
            fn visit_i128<E>(self, v: i128) -> Result<Value, E> {
                Ok(Value::Int(v))
            }
            fn visit_u128<E: serde::de::Error>(self, v: u128) -> Result<Value, E> {
                i128::try_from(v)
                    .map(Value::Int)
                    .map_err(|_| E::custom("integer too large"))
            }
            fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
                Ok(Value::Float(v))
            }
            fn visit_str<E>(self, v: &str) -> Result<Value, E> {
                Ok(Value::Str(v.into()))
            }
            fn visit_string<E>(self, v: String) -> Result<Value, E> {
                Ok(Value::Str(v))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<Value, A::Error> {
                let mut items = Vec::new();
                while let Some(n) = a.next_element()? {
                    items.push(n);
                }
                Ok(Value::Seq(items))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Value, A::Error> {
                let mut entries = Vec::new();
                while let Some(e) = a.next_entry()? {
                    entries.push(e);
                }
                Ok(Value::Map(entries))
            }
        }
        d.deserialize_any(V)
    }
}

/// A YAML syntax error with its position (when the parser gave one).
#[derive(Debug)]
pub struct SyntaxError {
    pub message: String,
    pub pos: Pos,
}

/// Parses one YAML document into a positioned tree. YAML 1.1 booleans (`yes`, `off`) stay
/// strings so that `mode: off` means the word the operator wrote; duplicate keys are errors.
pub fn parse(text: &str) -> Result<Node, SyntaxError> {
    let options = serde_saphyr::options! {
        strict_booleans: true,
        leading_zero_numbers_as_strings: true,
    };
    serde_saphyr::from_str_with_options::<Node>(text, options).map_err(|e| {
        let pos = e.location().map(|l| pos_of(&l)).unwrap_or_default();
        // The crate's Display adds its own snippet; keep only the first line, we render ours.
        let full = e.to_string();
        let first = full.lines().next().unwrap_or("invalid YAML").trim();
        let message = first
            .strip_prefix("error: ")
            .unwrap_or(first)
            .split(" --> ")
            .next()
            .unwrap_or(first);
        // The parser may prefix its own "line X column Y:"; we print the position ourselves.
        let message = match message
            .strip_prefix("line ")
            .and_then(|r| r.split_once(": "))
        {
            Some((_, rest)) => rest.to_string(),
            None => message.to_string(),
        };
        SyntaxError { message, pos }
    })
}

/// The exact source text of a scalar, so `version: 1.30` stays "1.30" rather than 1.3.
pub fn raw_text<'a>(source: &'a str, pos: &Pos) -> Option<&'a str> {
    if pos.len == 0 {
        return None;
    }
    let t = source.get(pos.offset..pos.offset + pos.len)?;
    // Quoted scalars' spans include the quotes; those already parsed as strings anyway.
    if t.starts_with('"') || t.starts_with('\'') {
        None
    } else {
        Some(t.trim())
    }
}

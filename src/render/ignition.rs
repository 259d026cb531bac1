//! Bundle -> Ignition v3 (Flatcar). Spec 3.3.0: what Debian's `ignition-validate` and the
//! Ignition in current Flatcar releases both accept.

use base64::Engine as _;
use serde_json::{Value, json};

use super::bundle::{Bundle, Contents};

pub const SPEC_VERSION: &str = "3.3.0";

/// A `data:` URL carrying `text` byte for byte.
pub fn data_url(text: &str) -> String {
    format!(
        "data:;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(text)
    )
}

pub fn to_ignition(b: &Bundle) -> Value {
    let files: Vec<Value> = b
        .files
        .iter()
        .map(|f| {
            let source = match &f.contents {
                Contents::Inline(t) => data_url(t),
                Contents::Remote(url) => url.clone(),
            };
            json!({
                "path": f.path,
                "mode": f.mode,
                "overwrite": true,
                "contents": { "source": source },
            })
        })
        .collect();
    let links: Vec<Value> = b
        .links
        .iter()
        .map(|(path, target)| json!({"path": path, "target": target, "overwrite": true, "hard": false}))
        .collect();
    let units: Vec<Value> = b
        .units
        .iter()
        .map(|u| {
            let mut v = json!({"name": u.name, "enabled": u.enabled});
            if let Some(c) = &u.contents {
                v["contents"] = json!(c);
            }
            if !u.dropins.is_empty() {
                v["dropins"] = u
                    .dropins
                    .iter()
                    .map(|(name, contents)| json!({"name": name, "contents": contents}))
                    .collect();
            }
            v
        })
        .collect();
    json!({
        "ignition": { "version": SPEC_VERSION },
        "passwd": { "users": [ { "name": "core", "sshAuthorizedKeys": b.ssh_keys } ] },
        "storage": { "files": files, "links": links },
        "systemd": { "units": units },
    })
}

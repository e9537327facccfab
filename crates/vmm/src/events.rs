//! Event lines: one JSON object per line on standard error, for the agent and for humans
//! (`{"event":"vm-exit","reason":"guest-poweroff",…}`).

use std::io::Write;

/// Writes `{"event": name, …fields}` as one line to standard error.
pub fn emit(name: &str, fields: serde_json::Value) {
    let mut object = serde_json::Map::new();
    object.insert("event".into(), name.into());
    if let serde_json::Value::Object(map) = fields {
        object.extend(map);
    }
    let line = serde_json::Value::Object(object).to_string();
    let mut stderr = std::io::stderr().lock();
    let _ = writeln!(stderr, "{line}");
}

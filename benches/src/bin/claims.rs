//! Placeholder claims program (to be replaced by the lead engineer): prints the JSON shape
//! `cargo xtask bench` expects, `{"claims": {"<key>": {"measured": "...", "details": ...}}}`,
//! with no claims measured yet.

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let out = serde_json::json!({ "claims": {}, "quick": quick });
    println!("{out}");
}

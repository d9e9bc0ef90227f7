//! What a simulated terminal answers: a scripted reply, an SCA-style XML response to
//! an SCA `<TRANSACTION>`, a ShieldConex-style JSON response to a JSON request with
//! an `action`, or the request itself (echo).

use anyhow::Context;
use rand::Rng;
use serde::Deserialize;
use serde_json::{json, Value};
use std::path::Path;

/// One rule of a `--script` file: the first rule whose `match` occurs in the
/// request answers with `reply`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct Rule {
    /// A substring of the request (empty matches everything).
    #[serde(rename = "match")]
    pub pattern: String,
    /// The reply sent back, verbatim.
    pub reply: String,
}

/// How the terminal answers each request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Responder {
    /// Send every request back unchanged.
    Echo,
    /// Answer SCA XML and ShieldConex JSON like a terminal would; echo anything else.
    Auto,
    /// Scripted rules first, then [`Responder::Auto`].
    Script(Vec<Rule>),
}

impl Responder {
    /// Reads a script: a JSON array of `{"match": "...", "reply": "..."}`.
    pub fn from_script(path: &Path) -> anyhow::Result<Responder> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read script {}", path.display()))?;
        let rules: Vec<Rule> = serde_json::from_str(&text).with_context(|| {
            format!(
                "script {} must be a JSON array of {{\"match\": \"...\", \"reply\": \"...\"}}",
                path.display()
            )
        })?;
        Ok(Responder::Script(rules))
    }

    /// The answer to a text request.
    pub fn answer_text(&self, request: &str, rng: &mut impl Rng) -> String {
        match self {
            Responder::Echo => request.to_owned(),
            Responder::Auto => auto(request, rng),
            Responder::Script(rules) => rules
                .iter()
                .find(|r| request.contains(&r.pattern))
                .map(|r| r.reply.clone())
                .unwrap_or_else(|| auto(request, rng)),
        }
    }
}

fn auto(request: &str, rng: &mut impl Rng) -> String {
    if request.contains("<TRANSACTION>") {
        return sca_response(request, rng);
    }
    if let Ok(Value::Object(obj)) = serde_json::from_str::<Value>(request) {
        if let Some(action) = obj.get("action").and_then(Value::as_str) {
            return shieldconex_response(action, &obj, rng);
        }
    }
    request.to_owned()
}

/// The text of `<TAG>…</TAG>` in `xml`, trimmed.
fn tag<'a>(xml: &'a str, name: &str) -> Option<&'a str> {
    let open = format!("<{name}>");
    let close = format!("</{name}>");
    let start = xml.find(&open)? + open.len();
    let len = xml[start..].find(&close)?;
    Some(xml[start..start + len].trim())
}

/// An SCA (Verifone Secure Commerce Application) style `<RESPONSE>`.
fn sca_response(request: &str, rng: &mut impl Rng) -> String {
    let function = tag(request, "FUNCTION_TYPE").unwrap_or("");
    let command = tag(request, "COMMAND").unwrap_or("");
    let counter = tag(request, "COUNTER").unwrap_or("1");
    let mut fields = vec![];
    let (text, result, code) = match (function, command) {
        ("SESSION", "START") => ("Session Started", "OK", "-1"),
        ("SESSION", "FINISH") => ("Session Finished", "OK", "-1"),
        ("PAYMENT", _) => {
            let amount = tag(request, "TRANS_AMOUNT").unwrap_or("0.00");
            fields.push(("TRANS_AMOUNT", amount.to_owned()));
            fields.push(("APPROVED_AMOUNT", amount.to_owned()));
            fields.push(("AUTH_CODE", format!("{:06}", rng.gen_range(0..1_000_000))));
            fields.push(("PAYMENT_MEDIA", "VISA".to_owned()));
            fields.push(("ACCT_NUM", "************1111".to_owned()));
            fields.push(("CTROUTD", rng.gen_range(1000..10_000).to_string()));
            ("APPROVED", "APPROVED", "5")
        }
        _ => ("Command Processed", "OK", "-1"),
    };
    let mut out = String::from("<RESPONSE>");
    out.push_str(&format!("<RESPONSE_TEXT>{text}</RESPONSE_TEXT>"));
    out.push_str(&format!(
        "<RESULT>{result}</RESULT><RESULT_CODE>{code}</RESULT_CODE>"
    ));
    out.push_str("<TERMINATION_STATUS>SUCCESS</TERMINATION_STATUS>");
    out.push_str(&format!("<COUNTER>{counter}</COUNTER>"));
    if let Some(invoice) = tag(request, "INVOICE") {
        out.push_str(&format!("<INVOICE>{invoice}</INVOICE>"));
    }
    for (name, value) in fields {
        out.push_str(&format!("<{name}>{value}</{name}>"));
    }
    out.push_str("</RESPONSE>");
    out
}

/// A ShieldConex style JSON response: same `traceId` and `action`, a `messageId`.
fn shieldconex_response(
    action: &str,
    request: &serde_json::Map<String, Value>,
    rng: &mut impl Rng,
) -> String {
    let payload = match action {
        "heartbeat" => json!({}),
        "tokenization-tokenize" | "tokenization-detokenize" | "tokenization-read" => {
            let values: Vec<Value> = request
                .get("payload")
                .and_then(|p| p.get("values"))
                .and_then(Value::as_array)
                .map(|vals| {
                    vals.iter()
                        .map(|v| {
                            let name = v.get("name").cloned().unwrap_or(Value::Null);
                            let value = v.get("value").and_then(Value::as_str).unwrap_or("");
                            let value = if action == "tokenization-tokenize" {
                                tokenize(value, rng)
                            } else {
                                value.to_owned()
                            };
                            json!({ "name": name, "value": value })
                        })
                        .collect()
                })
                .unwrap_or_default();
            let bfid: String = (0..32)
                .map(|_| char::from(b"0123456789abcdef"[rng.gen_range(0..16)]))
                .collect();
            json!({ "bfid": bfid, "values": values })
        }
        _ => json!({}),
    };
    let message_id: String = (0..25)
        .map(|_| char::from(b'0' + rng.gen_range(0..10u8)))
        .collect();
    json!({
        "traceId": request.get("traceId").cloned().unwrap_or(Value::Null),
        "action": action,
        "messageId": message_id,
        "success": true,
        "payload": payload,
    })
    .to_string()
}

/// Keeps the first and last four characters, replaces the middle digits.
fn tokenize(value: &str, rng: &mut impl Rng) -> String {
    let chars: Vec<char> = value.chars().collect();
    let n = chars.len();
    chars
        .iter()
        .enumerate()
        .map(|(i, c)| {
            if i >= 4 && i + 4 < n && c.is_ascii_digit() {
                char::from(b'0' + rng.gen_range(0..10u8))
            } else {
                *c
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn rng() -> rand::rngs::StdRng {
        rand::rngs::StdRng::seed_from_u64(1)
    }

    #[test]
    fn sca_session_start_is_answered_like_the_seed() {
        // seeds/000: the SCA session start request and its response.
        let req = "<TRANSACTION> <FUNCTION_TYPE>SESSION</FUNCTION_TYPE> <COMMAND>START</COMMAND> \
                   <BUSINESSDATE>20210709</BUSINESSDATE> <SWIPE_AHEAD>1</SWIPE_AHEAD> \
                   <TRAINING_MODE>0</TRAINING_MODE> <INVOICE>123456</INVOICE>\n\n</TRANSACTION>";
        let resp = Responder::Auto.answer_text(req, &mut rng());
        assert!(resp.starts_with("<RESPONSE><RESPONSE_TEXT>Session Started</RESPONSE_TEXT><RESULT>OK</RESULT><RESULT_CODE>-1</RESULT_CODE>"), "{resp}");
        assert!(resp.contains("<TERMINATION_STATUS>SUCCESS</TERMINATION_STATUS>"));
        assert!(resp.contains("<INVOICE>123456</INVOICE>"));
    }

    #[test]
    fn sca_payment_is_approved_with_the_amount() {
        let req = "<TRANSACTION><FUNCTION_TYPE>PAYMENT</FUNCTION_TYPE><COMMAND>CAPTURE</COMMAND><TRANS_AMOUNT>12.50</TRANS_AMOUNT></TRANSACTION>";
        let resp = Responder::Auto.answer_text(req, &mut rng());
        assert_eq!(tag(&resp, "RESULT"), Some("APPROVED"));
        assert_eq!(tag(&resp, "APPROVED_AMOUNT"), Some("12.50"));
        assert_eq!(tag(&resp, "AUTH_CODE").map(str::len), Some(6));
    }

    #[test]
    fn shieldconex_keeps_trace_id_and_tokenizes() {
        // seeds/003: a tokenize request; the answer repeats traceId and action.
        let req = r#"{"traceId":"b12be111-51a3-4b2e-b0bd-f79cb30f6e49","action":"tokenization-tokenize","payload":{"templateRef":"8e15","omit":false,"reference":"09420c55af7b","values":[{"name":"scx_token_card_number","value":"4444333322221111"}]}}"#;
        let resp: Value =
            serde_json::from_str(&Responder::Auto.answer_text(req, &mut rng())).unwrap();
        assert_eq!(resp["traceId"], "b12be111-51a3-4b2e-b0bd-f79cb30f6e49");
        assert_eq!(resp["action"], "tokenization-tokenize");
        assert_eq!(resp["success"], true);
        let token = resp["payload"]["values"][0]["value"].as_str().unwrap();
        assert_eq!(token.len(), 16);
        assert!(token.starts_with("4444") && token.ends_with("1111"));
        let hb = r#"{"traceId":"t1","action":"heartbeat","payload":{}}"#;
        let resp: Value =
            serde_json::from_str(&Responder::Auto.answer_text(hb, &mut rng())).unwrap();
        assert_eq!(
            (resp["traceId"].as_str(), resp["action"].as_str()),
            (Some("t1"), Some("heartbeat"))
        );
    }

    #[test]
    fn echo_script_and_fallback() {
        assert_eq!(
            Responder::Echo.answer_text("<TRANSACTION>", &mut rng()),
            "<TRANSACTION>"
        );
        assert_eq!(Responder::Auto.answer_text("hello", &mut rng()), "hello");
        let script = Responder::Script(vec![Rule {
            pattern: "GET COUNTER".into(),
            reply: "<RESPONSE><COUNTER>9</COUNTER></RESPONSE>".into(),
        }]);
        assert_eq!(
            script.answer_text("x GET COUNTER y", &mut rng()),
            "<RESPONSE><COUNTER>9</COUNTER></RESPONSE>"
        );
        assert_eq!(script.answer_text("other", &mut rng()), "other");
        let dir = std::env::temp_dir().join(format!("posrelay-script-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("s.json");
        std::fs::write(&path, r#"[{"match":"A","reply":"B"}]"#).unwrap();
        assert_eq!(
            Responder::from_script(&path).unwrap(),
            Responder::Script(vec![Rule {
                pattern: "A".into(),
                reply: "B".into()
            }])
        );
        std::fs::write(&path, r#"{"match":"A"}"#).unwrap();
        assert!(Responder::from_script(&path).is_err());
    }
}

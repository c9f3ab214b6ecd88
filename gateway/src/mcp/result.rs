//! How a run comes back to the agent: the value as structured content plus a text block
//! (a string as plain text, exactly as returned), console output in its own block beside it,
//! and failures as `isError` results whose structured content names the error kind.

use rmcp::model::{CallToolResult, ContentBlock, MetaObject};
use serde_json::{Value, json};

use shared::protocol::{LogLine, Outcome, RunError, RunResult};

/// `_meta` key carrying console output as structured data.
pub const CONSOLE_META_KEY: &str = "io.toolsmith/console";

pub fn run_result(result: RunResult) -> CallToolResult {
    match result.outcome {
        Outcome::Ok { value } => ok_result(value, &result.logs, result.logs_truncated),
        Outcome::Error { error } => error_result(&error, &result.logs, result.logs_truncated),
    }
}

fn ok_result(value: Value, logs: &[LogLine], truncated: bool) -> CallToolResult {
    let mut result = match value {
        Value::String(text) => CallToolResult::success(vec![ContentBlock::text(text)]),
        value => CallToolResult::structured(value),
    };
    add_console(&mut result, logs, truncated);
    result
}

/// An `isError` result: structured `{kind, message, line?, column?}`, text with the message.
pub fn error_result(error: &RunError, logs: &[LogLine], truncated: bool) -> CallToolResult {
    let mut text = format!("{}: {}", error.kind, error.message);
    if let (Some(line), Some(column)) = (error.line, error.column) {
        text.push_str(&format!(" (line {line}, column {column})"));
    }
    let mut result = CallToolResult::error(vec![ContentBlock::text(text)]);
    result.structured_content = Some(serde_json::to_value(error).unwrap_or_else(|_| json!({})));
    add_console(&mut result, logs, truncated);
    result
}

fn add_console(result: &mut CallToolResult, logs: &[LogLine], truncated: bool) {
    if logs.is_empty() && !truncated {
        return;
    }
    let mut text = String::from("console output (not part of the result):\n");
    for line in logs {
        text.push('[');
        text.push_str(&line.level);
        text.push_str("] ");
        text.push_str(&line.text);
        text.push('\n');
    }
    if truncated {
        text.push_str("[… more console output was cut]\n");
    }
    result.content.push(ContentBlock::text(text));
    let mut meta = MetaObject::new();
    meta.0.insert(
        CONSOLE_META_KEY.into(),
        json!({"lines": logs, "truncated": truncated}),
    );
    result.meta = Some(meta);
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::protocol::ErrorKind;

    fn text_of(block: &ContentBlock) -> &str {
        &block.as_text().expect("a text block").text
    }

    #[test]
    fn strings_come_back_exactly_as_text() {
        let result = ok_result(json!("  hello\n"), &[], false);
        assert_eq!(result.is_error, Some(false));
        assert_eq!(result.structured_content, None);
        assert_eq!(text_of(&result.content[0]), "  hello\n");
    }

    #[test]
    fn values_come_back_structured_with_console_beside() {
        let logs = vec![LogLine {
            level: "log".into(),
            text: "hi".into(),
        }];
        let result = ok_result(json!({"a": 1}), &logs, false);
        assert_eq!(result.structured_content, Some(json!({"a": 1})));
        assert_eq!(text_of(&result.content[0]), "{\"a\":1}");
        assert!(text_of(&result.content[1]).contains("[log] hi"));
        assert!(result.meta.unwrap().0.contains_key(CONSOLE_META_KEY));
    }

    #[test]
    fn errors_carry_kind_message_and_position() {
        let error = RunError::new(ErrorKind::RuntimeError, "Error: boom").at(3, 7);
        let result = error_result(&error, &[], false);
        assert_eq!(result.is_error, Some(true));
        assert_eq!(
            result.structured_content,
            Some(
                json!({"kind": "runtime_error", "message": "Error: boom", "line": 3, "column": 7})
            )
        );
        assert_eq!(
            text_of(&result.content[0]),
            "runtime_error: Error: boom (line 3, column 7)"
        );
    }
}

//! Tool code: the syntax check run before anything is stored, and the module source the
//! sandbox loads. Tool code comes in two forms:
//!
//! - **body**: the body of an async function with `context` in scope (top-level `return` and
//!   `await` work). It is wrapped as `export default async function (context) {…}` on the
//!   same first line, so every line keeps its number; `import` declarations are moved below
//!   the function (module imports are hoisted, so they still bind before the body runs).
//! - **module**: code with `export default` is loaded as it is.
//!
//! Parsing uses oxc, so a gateway checks code without Deno and without running any of it.

use oxc_allocator::Allocator;
use oxc_ast::ast::{ExportSpecifier, ModuleExportName, Statement};
use oxc_parser::{ParseOptions, Parser};
use oxc_span::SourceType;
use serde::{Deserialize, Serialize};

const BODY_PREFIX: &str = "export default async function (context) {";

/// How the tool's code is shaped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CodeForm {
    Body,
    Module,
}

/// The module source the sandbox loads, and how to map positions in it back to the code
/// the agent wrote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreparedCode {
    pub form: CodeForm,
    pub source: String,
    /// Columns on line 1 of `source` are this many UTF-16 units right of the agent's code.
    pub line1_offset: u32,
    /// Number of lines in the agent's code; positions past it belong to the wrapper.
    pub lines: u32,
}

/// A position in the agent's own code, 1-based, columns in UTF-16 units as V8 counts them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    pub line: u32,
    pub column: u32,
}

/// Code that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message} (line {}, column {})", position.line, position.column)]
pub struct SyntaxError {
    pub message: String,
    pub position: Position,
}

impl PreparedCode {
    /// Maps a 1-based position in `source` back to the agent's code.
    pub fn to_user_position(&self, line: u32, column: u32) -> Position {
        let line = line.clamp(1, self.lines.max(1));
        let column = if line == 1 {
            column.saturating_sub(self.line1_offset).max(1)
        } else {
            column.max(1)
        };
        Position { line, column }
    }
}

/// Checks that `code` parses as TypeScript and builds the module the sandbox loads.
pub fn prepare(code: &str) -> Result<PreparedCode, SyntaxError> {
    let allocator = Allocator::default();
    let source_type = SourceType::ts().with_module(true);
    let options = ParseOptions {
        allow_return_outside_function: true,
        ..ParseOptions::default()
    };
    let parsed = Parser::new(&allocator, code, source_type)
        .with_options(options)
        .parse();
    if let Some(error) = parsed.diagnostics.errors().next() {
        let offset = error
            .labels
            .iter()
            .find(|label| label.primary())
            .or_else(|| error.labels.first())
            .map_or(0, |label| label.offset());
        let mut message = error.message.to_string();
        if let Some(help) = &error.help {
            message.push_str(". ");
            message.push_str(help);
        }
        return Err(SyntaxError {
            message,
            position: position_at(code, offset as usize),
        });
    }

    let mut default_export = false;
    let mut other_export = None;
    let mut top_level_return = None;
    let mut imports = Vec::new();
    for statement in &parsed.program.body {
        match statement {
            Statement::ExportDefaultDeclaration(_) | Statement::TSExportAssignment(_) => {
                default_export = true;
            }
            Statement::ExportNamedDeclaration(named) => {
                if exports_default(&named.specifiers) {
                    default_export = true;
                } else {
                    other_export.get_or_insert(named.span.start);
                }
            }
            Statement::ExportFromDeclaration(from) => {
                if exports_default(&from.specifiers) {
                    default_export = true;
                } else {
                    other_export.get_or_insert(from.span.start);
                }
            }
            Statement::ExportDeclaration(decl) => {
                other_export.get_or_insert(decl.span.start);
            }
            Statement::ExportAllDeclaration(all) => {
                other_export.get_or_insert(all.span.start);
            }
            Statement::ImportDeclaration(import) => {
                imports.push((import.span.start as usize, import.span.end as usize));
            }
            Statement::ReturnStatement(ret) => {
                top_level_return.get_or_insert(ret.span.start);
            }
            _ => {}
        }
    }

    let lines = u32::try_from(code.lines().count().max(1)).unwrap_or(u32::MAX);
    if default_export {
        if let Some(offset) = top_level_return {
            return Err(SyntaxError {
                message: "a module that uses `export default` cannot `return` at the top level; \
                          return from the exported function instead"
                    .into(),
                position: position_at(code, offset as usize),
            });
        }
        return Ok(PreparedCode {
            form: CodeForm::Module,
            source: code.to_owned(),
            line1_offset: 0,
            lines,
        });
    }
    if let Some(offset) = other_export {
        return Err(SyntaxError {
            message: "tool code is either a function body (no exports) or a module with \
                      `export default async function (context) { … }`; this code exports \
                      something else but has no default export"
                .into(),
            position: position_at(code, offset as usize),
        });
    }
    Ok(wrap_body(code, &imports, lines))
}

fn exports_default(specifiers: &[ExportSpecifier<'_>]) -> bool {
    specifiers.iter().any(|s| match &s.exported {
        ModuleExportName::IdentifierName(n) => n.name == "default",
        ModuleExportName::IdentifierReference(n) => n.name == "default",
        ModuleExportName::StringLiteral(n) => n.value == "default",
    })
}

fn wrap_body(code: &str, imports: &[(usize, usize)], lines: u32) -> PreparedCode {
    let mut body = String::with_capacity(code.len() + BODY_PREFIX.len() + 8);
    body.push_str(BODY_PREFIX);
    let mut hoisted = String::new();
    let mut cursor = 0;
    for &(start, end) in imports {
        body.push_str(&code[cursor..start]);
        let text = &code[start..end];
        // Keep every line break and column of the code around the import.
        body.extend(text.chars().map(|c| if c == '\n' { '\n' } else { ' ' }));
        hoisted.push_str(text);
        hoisted.push('\n');
        cursor = end;
    }
    body.push_str(&code[cursor..]);
    body.push_str("\n}\n");
    body.push_str(&hoisted);
    PreparedCode {
        form: CodeForm::Body,
        source: body,
        line1_offset: utf16_len(BODY_PREFIX),
        lines,
    }
}

/// 1-based line and UTF-16 column of a byte offset.
fn position_at(code: &str, offset: usize) -> Position {
    let offset = offset.min(code.len());
    let before = &code[..floor_char_boundary(code, offset)];
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let line = before.matches('\n').count() + 1;
    Position {
        line: u32::try_from(line).unwrap_or(u32::MAX),
        column: utf16_len(&before[line_start..]) + 1,
    }
}

fn floor_char_boundary(s: &str, mut index: usize) -> usize {
    while !s.is_char_boundary(index) {
        index -= 1;
    }
    index
}

fn utf16_len(s: &str) -> u32 {
    u32::try_from(s.encode_utf16().count()).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_function_body_keeps_its_line_numbers() {
        let code = "const a = context.x;\nreturn a * 2;";
        let prepared = prepare(code).unwrap();
        assert_eq!(prepared.form, CodeForm::Body);
        assert!(prepared.source.starts_with(BODY_PREFIX));
        assert_eq!(prepared.source.lines().nth(1), Some("return a * 2;"));
        // `a` on line 1 sits right after the prefix in the wrapped source.
        let col_in_source = prepared.line1_offset + 7;
        assert_eq!(
            prepared.to_user_position(1, col_in_source),
            Position { line: 1, column: 7 }
        );
        assert_eq!(
            prepared.to_user_position(2, 3),
            Position { line: 2, column: 3 }
        );
    }

    #[test]
    fn imports_in_a_body_move_below_the_function() {
        let code = "import { x } from \"npm:x@1\";\nreturn x(context);";
        let prepared = prepare(code).unwrap();
        let lines: Vec<&str> = prepared.source.lines().collect();
        assert!(lines[0].starts_with(BODY_PREFIX));
        assert_eq!(lines[0].trim_start_matches(BODY_PREFIX).trim(), "");
        assert_eq!(lines[1], "return x(context);");
        assert_eq!(lines.last(), Some(&"import { x } from \"npm:x@1\";"));
    }

    #[test]
    fn export_default_is_a_module() {
        let code = "export default async function (ctx: { a: number }) {\n  return ctx.a;\n}";
        let prepared = prepare(code).unwrap();
        assert_eq!(prepared.form, CodeForm::Module);
        assert_eq!(prepared.source, code);
        assert_eq!(prepared.line1_offset, 0);
    }

    #[test]
    fn syntax_errors_carry_the_line_and_column() {
        let error = prepare("const a = 1;\nconst b = ;\nreturn a;").unwrap_err();
        assert_eq!(error.position.line, 2);
        assert_eq!(error.position.column, 11);
        assert!(!error.message.is_empty());
    }

    #[test]
    fn typescript_parses() {
        assert!(prepare("const n: number = context.n as number;\nreturn n;").is_ok());
    }

    #[test]
    fn a_module_cannot_return_at_top_level() {
        let error = prepare("export default () => 1;\nreturn 2;").unwrap_err();
        assert_eq!(error.position.line, 2);
    }

    #[test]
    fn named_exports_without_default_are_refused() {
        let error = prepare("export const x = 1;").unwrap_err();
        assert!(error.message.contains("default"));
        assert!(prepare("const f = () => 1;\nexport { f as default };").is_ok());
    }

    #[test]
    fn columns_count_utf16_units() {
        let error = prepare("const s = \"😀\"; const = 1;").unwrap_err();
        assert_eq!(error.position.line, 1);
        // "😀" is two UTF-16 units; the error is at the `=` after `const `.
        assert_eq!(error.position.column, 23);
    }
}

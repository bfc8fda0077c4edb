//! Tool hooks: after a policy token, a tool may append text that is not a policy
//! action (its tokens are fed to the model so the KV cache stays consistent, but
//! they carry no log-probability). The calculator of the arithmetic task is the
//! first user: on "=", it evaluates the last two-term expression.

/// Called after every policy token of a row with the row's generated text so
/// far; returns text to append, if any.
pub trait ToolHook: Send + Sync {
    fn after_token(&self, generated: &str) -> Option<String>;
}

/// Evaluates `a + b =` / `a - b =` (integers) when the text ends with `=`.
/// Anything else (more terms, no operands) gets no answer: the policy must
/// then write the result itself.
#[derive(Debug, Clone, Default)]
pub struct Calculator;

impl Calculator {
    /// The value of the two-term expression just before a trailing `=`.
    pub fn evaluate(text: &str) -> Option<i64> {
        let body = text.strip_suffix('=')?;
        // The expression starts after the last separator that is not part of it.
        let start = body.rfind([',', '.', ':', '\n', ';', '(']).map_or(0, |i| i + 1);
        let expr: String = body[start..].chars().filter(|c| !c.is_whitespace()).collect();
        let (sign, rest) = match expr.strip_prefix('-') {
            Some(r) => (-1, r),
            None => (1, expr.as_str()),
        };
        let op_at = rest.find(['+', '-'])?;
        let (a, b) = (&rest[..op_at], &rest[op_at + 1..]);
        let parse = |s: &str| -> Option<i64> {
            if s.is_empty() || s.len() > 12 || !s.bytes().all(|c| c.is_ascii_digit()) {
                return None;
            }
            s.parse().ok()
        };
        let (a, b) = (sign * parse(a)?, parse(b)?);
        Some(if &rest[op_at..op_at + 1] == "+" { a + b } else { a - b })
    }
}

impl ToolHook for Calculator {
    fn after_token(&self, generated: &str) -> Option<String> {
        let v = Self::evaluate(generated.trim_end_matches(' '))?;
        Some(format!(" {v}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evaluates_the_last_two_term_expression() {
        assert_eq!(Calculator::evaluate("3 + 4 ="), Some(7));
        assert_eq!(Calculator::evaluate("1 + 2 = 3, 3 - 5 ="), Some(-2));
        assert_eq!(Calculator::evaluate("-2 + 5="), Some(3));
        assert_eq!(Calculator::evaluate("1 + 2 + 3 ="), None);
        assert_eq!(Calculator::evaluate("7 ="), None);
        assert_eq!(Calculator::evaluate("3 + 4"), None);
        assert_eq!(Calculator.after_token("8 - 9 ="), Some(" -1".into()));
    }
}

//! Tool hooks: after a policy token, a tool may append text that is not a policy
//! action (its tokens are fed to the model so the KV cache stays consistent, but
//! they carry no log-probability). The calculator of the arithmetic task is the
//! first user: on "=", it evaluates the last two terms of the expression.

/// Called after every policy token of a row with the row's generated text so
/// far; returns text to append, if any.
pub trait ToolHook: Send + Sync {
    fn after_token(&self, generated: &str) -> Option<String>;
}

/// The paper's calculator (App. E): when the text ends with `=`, the
/// expression before it is read and only its **last two terms** are
/// evaluated — `a + b =` gives a + b, and `8 - 4 + 2 + 5 =` gives 2 + 5 =
/// 7, not 11 — so that a rationale cannot have a whole question computed
/// at once ("to prevent the model from cheating", §4.4). Integers only;
/// text that is no such expression gets no answer.
#[derive(Debug, Clone, Default)]
pub struct Calculator;

impl Calculator {
    /// The value of the last two terms of the expression just before a trailing `=`.
    pub fn evaluate(text: &str) -> Option<i64> {
        let body = text.strip_suffix('=')?;
        // The expression starts after the last separator that is not part of it.
        let start = body.rfind([',', '.', ':', '\n', ';', '(']).map_or(0, |i| i + 1);
        let expr: String = body[start..].chars().filter(|c| !c.is_whitespace()).collect();
        // A leading minus is the first term's sign, not an operator.
        let (sign, rest) = match expr.strip_prefix('-') {
            Some(r) => (-1, r),
            None => (1, expr.as_str()),
        };
        let parse = |s: &str| -> Option<i64> {
            if s.is_empty() || s.len() > 12 || !s.bytes().all(|c| c.is_ascii_digit()) {
                return None;
            }
            s.parse().ok()
        };
        // Terms and the operators between them; every term a plain number.
        let ops: Vec<usize> = rest.match_indices(['+', '-']).map(|(i, _)| i).collect();
        let last_op = *ops.last()?;
        let b = parse(&rest[last_op + 1..])?;
        let a_from = ops.iter().rev().nth(1).map_or(0, |i| i + 1);
        let a = parse(&rest[a_from..last_op])?;
        // The first term keeps its sign only when it is the expression's first.
        let a = if a_from == 0 { sign * a } else { a };
        // Every earlier term must be a number too (the text is an expression).
        let mut from = 0;
        for &i in &ops[..ops.len() - 1] {
            parse(&rest[from..i])?;
            from = i + 1;
        }
        Some(if &rest[last_op..last_op + 1] == "+" { a + b } else { a - b })
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
    fn evaluates_the_last_two_terms() {
        assert_eq!(Calculator::evaluate("3 + 4 ="), Some(7));
        assert_eq!(Calculator::evaluate("1 + 2 = 3, 3 - 5 ="), Some(-2));
        assert_eq!(Calculator::evaluate("-2 + 5="), Some(3));
        // Longer expressions: only their last two terms (the paper's App. E).
        assert_eq!(Calculator::evaluate("1 + 2 + 3 ="), Some(5));
        assert_eq!(Calculator::evaluate("8 - 4 + 2 + 5 ="), Some(7));
        assert_eq!(Calculator::evaluate("-8 - 4 - 2 ="), Some(2));
        assert_eq!(Calculator::evaluate("6 - 0 = 6, 6 - 4 - 8 ="), Some(-4));
        // Not an expression: no answer.
        assert_eq!(Calculator::evaluate("7 ="), None);
        assert_eq!(Calculator::evaluate("3 + 4"), None);
        assert_eq!(Calculator::evaluate("3 + + 4 ="), None);
        assert_eq!(Calculator::evaluate("1 + x + 4 ="), None);
        assert_eq!(Calculator::evaluate("3 + ="), None);
        assert_eq!(Calculator.after_token("8 - 9 ="), Some(" -1".into()));
    }
}

//! How deep the values of a request may nest: one rule for a Check's attributes and for
//! a whole input document given as JSON (OPA REST), so every adapter refuses the same
//! depths.
//!
//! Each object and list is one level; the attributes object itself is the first. A
//! deeper value is refused before any policy sees it (`nested too deeply`).

use regorus::Value;

use super::{InvalidField, request::NOT_FINITE};

/// Deepest accepted nesting of `attributes` / `arguments` structs.
const MAX_STRUCT_DEPTH: usize = 32;

/// The levels above a section's attributes in an input document (`input` and the
/// section, as in `input.context.attributes`): a JSON input may nest that much deeper
/// than a Check's attributes, and no more.
const INPUT_LEVELS_ABOVE_ATTRIBUTES: usize = 2;

const TOO_DEEP: &str = "nested too deeply";

/// `None` for a value that holds no others; else `each` over an object's, a list's or
/// a set's members, stopping at the first error.
fn try_members<E>(
    value: &Value,
    each: impl FnMut(&Value) -> Result<(), E>,
) -> Option<Result<(), E>> {
    match value {
        Value::Object(o) => Some(o.values().try_for_each(each)),
        Value::Array(a) => Some(a.iter().try_for_each(each)),
        Value::Set(s) => Some(s.iter().try_for_each(each)),
        _ => None,
    }
}

/// Checks `value`, at nesting `level`, and everything in it: no object or list deeper
/// than `max`, and every other value accepted by `leaf`. A value past `max` is refused
/// before its members are walked, so the walk is as deep as the bound and no deeper.
fn walk(
    value: &Value,
    level: usize,
    max: usize,
    leaf: &impl Fn(&Value) -> Result<(), &'static str>,
) -> Result<(), &'static str> {
    let too_deep = level > max;
    let members = try_members(value, |member| {
        if too_deep {
            return Err(TOO_DEEP);
        }
        walk(member, level + 1, max, leaf)
    });
    match members {
        None => leaf(value),
        // An empty object or list past the bound is as deep as a full one.
        Some(Ok(())) if too_deep => Err(TOO_DEEP),
        Some(result) => result,
    }
}

/// Checks a Check's `attributes` / `arguments` object (`field` names it): nested at
/// most [`MAX_STRUCT_DEPTH`] levels, with numbers that JSON can carry.
pub(super) fn validate_attributes(value: Option<&Value>, field: &str) -> Result<(), InvalidField> {
    let finite = |value: &Value| {
        if *value == NOT_FINITE {
            Err("numbers must be finite")
        } else {
            Ok(())
        }
    };
    let Some(attributes) = value else {
        return Ok(());
    };
    // The object is the first level; its fields are on the second.
    walk(attributes, 1, MAX_STRUCT_DEPTH, &finite)
        .map_err(|problem| InvalidField::new(field, problem))
}

/// Refuses an input document given whole (OPA REST) that nests deeper than a Check's
/// could: its sections' attributes nest as deep as a Check's, as `input: nested too
/// deeply` otherwise.
pub fn validate_input_depth(input: &Value) -> Result<(), InvalidField> {
    walk(
        input,
        1,
        MAX_STRUCT_DEPTH + INPUT_LEVELS_ABOVE_ATTRIBUTES,
        &|_| Ok(()),
    )
    .map_err(|problem| InvalidField::new("input", problem))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `inner` inside `levels` lists.
    fn lists(levels: usize, inner: &str) -> String {
        format!("{}{inner}{}", "[".repeat(levels), "]".repeat(levels))
    }

    fn input(json: &str) -> Value {
        Value::from_json_str(json).unwrap()
    }

    #[test]
    fn an_input_nests_as_deep_as_a_checks_attributes() {
        // input (1), context (2), attributes (3) and 32 more: a Check's attributes plus
        // their 31 lists.
        let deepest = format!(
            r#"{{"context": {{"attributes": {{"a": {}}}}}}}"#,
            lists(31, "1")
        );
        validate_input_depth(&input(&deepest)).unwrap();
        for past in [
            format!(
                r#"{{"context": {{"attributes": {{"a": {}}}}}}}"#,
                lists(32, "1")
            ),
            // Also when the deepest list is empty, and in an input that is all lists.
            format!(
                r#"{{"context": {{"attributes": {{"a": {}}}}}}}"#,
                lists(32, "")
            ),
            lists(35, "1"),
        ] {
            let err = validate_input_depth(&input(&past)).unwrap_err();
            assert_eq!(err.to_string(), "input: nested too deeply", "{past}");
        }
        validate_input_depth(&input(&lists(34, ""))).unwrap();
    }

    #[test]
    fn attributes_past_the_bound_are_refused_also_when_empty() {
        // The attributes object (1) and the field's value (2) with 30 lists inside: 32.
        let attributes =
            |lists_in_field: usize| input(&format!(r#"{{"a": {}}}"#, lists(lists_in_field, "")));
        validate_attributes(Some(&attributes(31)), "x").unwrap();
        let err = validate_attributes(Some(&attributes(32)), "x").unwrap_err();
        assert_eq!(err.to_string(), "x: nested too deeply");
    }

    #[test]
    fn attributes_hold_finite_numbers() {
        let mut object = regorus::value::Object::new();
        object.insert(Value::from("x"), Value::from(vec![NOT_FINITE]));
        let err = validate_attributes(Some(&object.into_value()), "x").unwrap_err();
        assert_eq!(err.to_string(), "x: numbers must be finite");
        validate_attributes(Some(&input(r#"{"x": [1.5, 2, null]}"#)), "x").unwrap();
    }
}

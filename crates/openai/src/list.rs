//! Cursor pagination over rendered items, as OpenAI's list endpoints do it: `limit` (1–100,
//! default 20), `order` (`asc` | `desc`), `after` (an item id; the page starts after it).

use serde::Deserialize;
use serde_json::{Value, json};

use crate::error::{OaiError, OaiResult};

/// Other query parameters (`include[]`, ...) are accepted and ignored: items always carry
/// everything Stead has.
#[derive(Debug, Default, Deserialize)]
pub struct ListQuery {
    pub after: Option<String>,
    pub before: Option<String>,
    pub limit: Option<u32>,
    pub order: Option<String>,
}

/// One page of `items` (given oldest first), in the requested order, as an OpenAI list.
pub fn page(items: Vec<Value>, q: &ListQuery, default_order: &str) -> OaiResult<Value> {
    let position = |id: &str| items.iter().position(|i| i["id"] == id);
    let (picked, has_more) = page_window(items.len(), position, q, default_order)?;
    Ok(list_object(picked.into_iter().map(|i| items[i].clone()).collect(), has_more))
}

/// Which of `len` items (oldest first) a page holds, as their indexes in page order, and
/// whether more follow. `position` finds an item's index by id (the cursors); the work is
/// that of one lookup per cursor plus the page, whatever `len` is.
pub fn page_window(
    len: usize,
    position: impl Fn(&str) -> Option<usize>,
    q: &ListQuery,
    default_order: &str,
) -> OaiResult<(Vec<usize>, bool)> {
    let limit = q.limit.unwrap_or(20);
    if !(1..=100).contains(&limit) {
        return Err(OaiError::invalid("limit", "invalid_value", "'limit' must be between 1 and 100."));
    }
    let asc = match q.order.as_deref().unwrap_or(default_order) {
        "asc" => true,
        "desc" => false,
        other => {
            return Err(OaiError::invalid(
                "order",
                "invalid_value",
                format!("'order' must be 'asc' or 'desc', not '{other}'."),
            ));
        }
    };
    // Positions in the requested order.
    let ordered = |i: usize| if asc { i } else { len - 1 - i };
    let cursor = |id: &str, param: &str| -> OaiResult<usize> {
        position(id)
            .filter(|&i| i < len)
            .map(ordered)
            .ok_or_else(|| OaiError::invalid(param, "invalid_value", format!("No item with id '{id}' in this list.")))
    };
    let start = match &q.after {
        Some(a) => cursor(a, "after")? + 1,
        None => 0,
    };
    let end = match &q.before {
        Some(b) => cursor(b, "before")?,
        None => len,
    };
    let end = end.max(start);
    let take = (end - start).min(limit as usize);
    let picked = (start..start + take).map(ordered).collect();
    Ok((picked, end - start > limit as usize))
}

/// An OpenAI list object around one page of items.
pub fn list_object(data: Vec<Value>, has_more: bool) -> Value {
    json!({
        "object": "list",
        "first_id": data.first().map(|i| i["id"].clone()),
        "last_id": data.last().map(|i| i["id"].clone()),
        "has_more": has_more,
        "data": data,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn items(n: usize) -> Vec<Value> {
        (0..n).map(|i| json!({"id": format!("i{i}")})).collect()
    }

    #[test]
    fn pages_walk_both_orders() {
        let q = ListQuery { limit: Some(2), order: Some("asc".into()), ..Default::default() };
        let p = page(items(5), &q, "desc").unwrap();
        assert_eq!(p["data"], json!([{"id": "i0"}, {"id": "i1"}]));
        assert_eq!(p["has_more"], true);
        let q = ListQuery { limit: Some(2), order: Some("asc".into()), after: Some("i3".into()), ..Default::default() };
        let p = page(items(5), &q, "desc").unwrap();
        assert_eq!((p["data"].as_array().unwrap().len(), p["has_more"].as_bool()), (1, Some(false)));
        let q = ListQuery { limit: Some(3), ..Default::default() };
        let p = page(items(5), &q, "desc").unwrap();
        assert_eq!((p["first_id"].as_str(), p["last_id"].as_str()), (Some("i4"), Some("i2")));
    }

    #[test]
    fn bad_cursors_and_limits_are_errors() {
        for q in [
            ListQuery { limit: Some(0), ..Default::default() },
            ListQuery { limit: Some(101), ..Default::default() },
            ListQuery { order: Some("up".into()), ..Default::default() },
            ListQuery { after: Some("nope".into()), ..Default::default() },
        ] {
            assert_eq!(page(items(3), &q, "asc").unwrap_err().status.as_u16(), 400);
        }
    }
}

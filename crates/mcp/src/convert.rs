//! Conversions from the SDK's model types to ours. The only place that reads `rmcp::model`
//! content, so a change in the SDK's types lands here.

use rmcp::model::{CallToolResult, ContentBlock, ResourceContents, Tool};

use crate::{CallResult, McpTool};

pub(crate) fn tool(tool: Tool) -> McpTool {
    let annotations = tool.annotations.unwrap_or_default();
    McpTool {
        name: tool.name.into_owned(),
        description: tool.description.map(|d| d.into_owned()).unwrap_or_default(),
        input_schema: serde_json::Value::Object(tool.input_schema.as_ref().clone()),
        read_only_hint: annotations.read_only_hint,
        idempotent_hint: annotations.idempotent_hint,
        destructive_hint: annotations.destructive_hint,
    }
}

pub(crate) fn call_result(result: CallToolResult) -> CallResult {
    let parts: Vec<String> = result.content.iter().map(content_text).collect();
    CallResult {
        text: parts.join("\n"),
        structured: result.structured_content,
        // The spec: an absent `isError` means success.
        is_error: result.is_error.unwrap_or(false),
    }
}

/// Text as is; anything else as a one-line bracketed summary, because the model reads this and
/// base64 payloads would only waste its context.
fn content_text(block: &ContentBlock) -> String {
    match block {
        ContentBlock::Text(text) => text.text.clone(),
        ContentBlock::Image(image) => {
            format!("[image: {}, {} bytes]", image.mime_type, base64_len(&image.data))
        }
        ContentBlock::Audio(audio) => {
            format!("[audio: {}, {} bytes]", audio.mime_type, base64_len(&audio.data))
        }
        ContentBlock::Resource(embedded) => match &embedded.resource {
            // An embedded text resource is content the tool chose to return: keep it.
            ResourceContents::TextResourceContents { uri, text, .. } => {
                format!("[resource: {uri}]\n{text}")
            }
            ResourceContents::BlobResourceContents { uri, mime_type, blob, .. } => format!(
                "[resource: {uri}, {}, {} bytes]",
                mime_type.as_deref().unwrap_or("application/octet-stream"),
                base64_len(blob)
            ),
            _ => "[resource]".to_owned(),
        },
        ContentBlock::ResourceLink(link) => format!("[resource link: {} <{}>]", link.name, link.uri),
        // `ContentBlock` is non-exhaustive: a newer SDK may add kinds.
        #[allow(unreachable_patterns)]
        other => format!("[{} content]", content_kind(other)),
    }
}

fn content_kind(block: &ContentBlock) -> String {
    serde_json::to_value(block)
        .ok()
        .and_then(|v| v.get("type").and_then(|t| t.as_str()).map(str::to_owned))
        .unwrap_or_else(|| "unknown".to_owned())
}

/// Decoded size of base64 `data` without decoding it.
fn base64_len(data: &str) -> usize {
    let significant = data.bytes().filter(|b| !b.is_ascii_whitespace()).count();
    let padding = data.bytes().rev().filter(|b| !b.is_ascii_whitespace()).take_while(|&b| b == b'=').count();
    (significant / 4 * 3 + (significant % 4).saturating_sub(1)).saturating_sub(padding.min(2))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_sizes() {
        assert_eq!(base64_len(""), 0);
        assert_eq!(base64_len("QQ=="), 1);
        assert_eq!(base64_len("QUI="), 2);
        assert_eq!(base64_len("QUJD"), 3);
        assert_eq!(base64_len("QUJDRA=="), 4);
        assert_eq!(base64_len("QUJDRA"), 4); // unpadded
        assert_eq!(base64_len("QUJD\nRA=="), 4);
    }

    #[test]
    fn results_keep_text_structure_and_error_flag() {
        let raw = serde_json::json!({
            "content": [
                {"type": "text", "text": "first"},
                {"type": "image", "data": "QUJD", "mimeType": "image/png"},
                {"type": "resource", "resource": {"uri": "demo://a", "text": "inline"}},
                {"type": "resource_link", "uri": "demo://b", "name": "b"},
                {"type": "text", "text": "last"}
            ],
            "structuredContent": {"n": 1},
            "isError": true
        });
        let result: CallToolResult = serde_json::from_value(raw).unwrap();
        let ours = call_result(result);
        assert_eq!(
            ours.text,
            "first\n[image: image/png, 3 bytes]\n[resource: demo://a]\ninline\n[resource link: b <demo://b>]\nlast"
        );
        assert_eq!(ours.structured, Some(serde_json::json!({"n": 1})));
        assert!(ours.is_error);
    }

    #[test]
    fn absent_is_error_means_success() {
        let result: CallToolResult =
            serde_json::from_value(serde_json::json!({"content": [{"type": "text", "text": "ok"}]})).unwrap();
        let ours = call_result(result);
        assert!(!ours.is_error);
        assert_eq!(ours.structured, None);
    }
}

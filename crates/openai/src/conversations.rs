//! `/v1/conversations` and their items. A conversation is a session; its items are rendered
//! from the session's log; adding items appends `items_added`, deleting one appends
//! `item_removed` (the model no longer sees it; the audit log keeps it).

use std::collections::HashMap;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use stead_api::{Principal, authenticate};
use stead_store::SessionRecord;

use crate::error::{OaiError, OaiResult, parse_body, respond};
use crate::items::{Rendered, render};
use crate::list::{ListQuery, list_object, page_window};
use crate::request::{check_metadata, parse_input};
use crate::responses::{conversation_id, parse_conversation_id};
use crate::{OaiState, SESSION_KIND};

/// The agent conversations are created with. Each response brings its own agent version;
/// this one only says that input queues (`enqueue`) and runs pause into the conversation.
const CONVERSATION_AGENT: &str = r#"{"name": "openai-conversation", "description": "Conversations created through the OpenAI-compatible API; each response runs on its own settings.", "model": {"provider": "scripted", "name": "unused"}, "concurrency": "enqueue", "pause": "complete"}"#;

/// Most items one request may add, as OpenAI limits it.
const MAX_ITEMS_PER_REQUEST: usize = 20;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateConversation {
    items: Option<Vec<Value>>,
    metadata: Option<Map<String, Value>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateConversation {
    metadata: Map<String, Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateItems {
    items: Vec<Value>,
}

fn parse<T: serde::de::DeserializeOwned>(body: &Bytes) -> OaiResult<T> {
    parse_body(body)
}

fn conversation_object(s: &SessionRecord) -> Value {
    json!({
        "id": conversation_id(&s.id),
        "object": "conversation",
        "created_at": s.created_at.millis() / 1000,
        "metadata": user_metadata(&s.metadata),
    })
}

/// The client's metadata, without Stead's own marker.
fn user_metadata(m: &Value) -> Value {
    match m.get("metadata") {
        Some(v) if v.is_object() => v.clone(),
        _ => json!({}),
    }
}

async fn load(st: &OaiState, p: &Principal, id: &str) -> OaiResult<SessionRecord> {
    let session_id = parse_conversation_id(id)?;
    match st.engine.store().get_session(&p.tenant, &session_id).await {
        Ok(s) => Ok(s),
        Err(stead_store::Error::NotFound { .. }) => Err(OaiError::not_found("Conversation", id)),
        Err(e) => Err(e.into()),
    }
}

fn items_as_messages(items: &[Value]) -> OaiResult<Vec<stead_core::message::Message>> {
    if items.len() > MAX_ITEMS_PER_REQUEST {
        return Err(OaiError::invalid(
            "items",
            "array_above_max_length",
            format!("'items' may hold at most {MAX_ITEMS_PER_REQUEST} items; got {}.", items.len()),
        ));
    }
    let parsed = parse_input(Some(&Value::Array(items.to_vec())), &HashMap::new()).map_err(|mut e| {
        if let Some(p) = &e.param {
            e.param = Some(p.replacen("input", "items", 1));
        }
        e
    })?;
    if !parsed.approvals.is_empty() {
        return Err(OaiError::unsupported(
            "items",
            "Approval responses answer a response; send them as input to /v1/responses.",
        ));
    }
    Ok(parsed.messages)
}

pub async fn create(State(st): State<OaiState>, headers: HeaderMap, body: Bytes) -> Response {
    respond(async move {
        let p = authenticate(&st.auth, &headers).await?;
        let req: CreateConversation = if body.is_empty() { CreateConversation::default() } else { parse(&body)? };
        let metadata = req.metadata.unwrap_or_default();
        check_metadata(&metadata)?;
        let messages = items_as_messages(req.items.as_deref().unwrap_or_default())?;
        let agent = crate::ensure_agent(&st, &p.tenant, CONVERSATION_AGENT).await?;
        let session = st
            .engine
            .create_session(
                &p.tenant,
                &p.id,
                &agent.name,
                Some(agent.version),
                json!({ SESSION_KIND: "conversation", "metadata": metadata }),
            )
            .await?;
        if !messages.is_empty()
            && let Err(e) = st.engine.add_items(&p.tenant, &p.id, &session.id, messages).await
        {
            // All or nothing: no half-made conversation.
            let _ = st.engine.store().delete_session(&p.tenant, &session.id).await;
            return Err(e.into());
        }
        Ok(Json(conversation_object(&session)).into_response())
    })
    .await
}

pub async fn retrieve(State(st): State<OaiState>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    respond(async move {
        let p = authenticate(&st.auth, &headers).await?;
        let s = load(&st, &p, &id).await?;
        Ok(Json(conversation_object(&s)).into_response())
    })
    .await
}

pub async fn update(State(st): State<OaiState>, headers: HeaderMap, Path(id): Path<String>, body: Bytes) -> Response {
    respond(async move {
        let p = authenticate(&st.auth, &headers).await?;
        let req: UpdateConversation = parse(&body)?;
        check_metadata(&req.metadata)?;
        let s = load(&st, &p, &id).await?;
        let mut metadata = s.metadata.clone();
        if !metadata.is_object() {
            metadata = json!({});
        }
        metadata["metadata"] = Value::Object(req.metadata);
        let s = st.engine.update_session_metadata(&p.tenant, &p.id, &s.id, metadata).await?;
        Ok(Json(conversation_object(&s)).into_response())
    })
    .await
}

pub async fn delete(State(st): State<OaiState>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    respond(async move {
        let p = authenticate(&st.auth, &headers).await?;
        let s = load(&st, &p, &id).await?;
        st.engine.store().delete_session(&p.tenant, &s.id).await?;
        Ok(Json(json!({"id": id, "object": "conversation.deleted", "deleted": true})).into_response())
    })
    .await
}

pub async fn create_items(
    State(st): State<OaiState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    respond(async move {
        let p = authenticate(&st.auth, &headers).await?;
        let req: CreateItems = parse(&body)?;
        let s = load(&st, &p, &id).await?;
        let messages = items_as_messages(&req.items)?;
        if messages.is_empty() {
            return Err(OaiError::invalid("items", "empty_array", "'items' must hold at least one item."));
        }
        let event = st.engine.add_items(&p.tenant, &p.id, &s.id, messages).await?;
        let data: Vec<Value> = render(&s.id, std::slice::from_ref(&event)).into_iter().map(|r| r.item).collect();
        Ok(Json(json!({
            "object": "list",
            "first_id": data.first().map(|i| i["id"].clone()),
            "last_id": data.last().map(|i| i["id"].clone()),
            "has_more": false,
            "data": data,
        }))
        .into_response())
    })
    .await
}

pub async fn list_items(
    State(st): State<OaiState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    q: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    respond(async move {
        let p = authenticate(&st.auth, &headers).await?;
        let Query(q) = q.map_err(|e| OaiError::invalid("query", "invalid_value", e.body_text()))?;
        let s = load(&st, &p, &id).await?;
        let list = st
            .items
            .with_items(&st, &p.tenant, &s.id, |r| {
                let items = r.items();
                let (picked, has_more) = page_window(items.len(), |id| r.position(id), &q, "desc")?;
                Ok::<_, OaiError>(list_object(picked.into_iter().map(|i| items[i].item.clone()).collect(), has_more))
            })
            .await??;
        Ok(Json(list).into_response())
    })
    .await
}

async fn find_item(st: &OaiState, p: &Principal, conv: &str, item: &str) -> OaiResult<(SessionRecord, Rendered)> {
    let s = load(st, p, conv).await?;
    let not_found = || OaiError::new(StatusCode::NOT_FOUND, "not_found", format!("Item with id '{item}' not found."));
    let found = st.items.with_items(st, &p.tenant, &s.id, |r| r.position(item).map(|i| r.items()[i].clone())).await?;
    Ok((s, found.ok_or_else(not_found)?))
}

pub async fn retrieve_item(
    State(st): State<OaiState>,
    headers: HeaderMap,
    Path((id, item_id)): Path<(String, String)>,
) -> Response {
    respond(async move {
        let p = authenticate(&st.auth, &headers).await?;
        let (_, item) = find_item(&st, &p, &id, &item_id).await?;
        Ok(Json(item.item).into_response())
    })
    .await
}

pub async fn delete_item(
    State(st): State<OaiState>,
    headers: HeaderMap,
    Path((id, item_id)): Path<(String, String)>,
) -> Response {
    respond(async move {
        let p = authenticate(&st.auth, &headers).await?;
        let (s, item) = find_item(&st, &p, &id, &item_id).await?;
        st.engine.remove_item(&p.tenant, &p.id, &s.id, item.seq, item.index >> 12).await?;
        let s = st.engine.store().get_session(&p.tenant, &s.id).await?;
        Ok(Json(conversation_object(&s)).into_response())
    })
    .await
}

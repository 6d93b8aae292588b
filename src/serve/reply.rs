//! An HTTP answer as the handlers give it: a status, a content type and a body.

use serde_json::Value;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
}

impl Reply {
    pub fn json(status: u16, value: &Value) -> Reply {
        Reply {
            status,
            content_type: "application/json; charset=utf-8",
            body: value.to_string(),
        }
    }

    pub fn text(status: u16, body: impl Into<String>) -> Reply {
        Reply {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.into(),
        }
    }

    pub fn html(body: String) -> Reply {
        Reply {
            status: 200,
            content_type: "text/html; charset=utf-8",
            body,
        }
    }

    /// IntegreSQL's error shape (its web framework's): `{"message": "..."}`.
    pub fn message(status: u16, message: impl Into<String>) -> Reply {
        Reply::json(status, &serde_json::json!({ "message": message.into() }))
    }

    pub fn no_content() -> Reply {
        Reply {
            status: 204,
            content_type: "text/plain; charset=utf-8",
            body: String::new(),
        }
    }
}

//! serve's HTTP side, on tiny_http: worker threads take requests, check the token, read a
//! bounded body, route to faitout's API, IntegreSQL's or the front page, answer, and log one
//! line per request on stderr.

use crate::serve::reply::Reply;
use crate::serve::service::{Caller, Service};
use crate::serve::{faitout, integresql, page};
use std::io::Read;
use std::time::{Duration, Instant};
use tiny_http::{Header, Method, Request, Response};

/// The largest request body read; a larger one is refused (IntegreSQL's bodies are a few
/// dozen bytes).
pub const BODY_LIMIT: usize = 64 * 1024;

/// Serves requests until serve stops.
pub fn work(server: &tiny_http::Server, service: &Service) {
    while !service.stopping() {
        match server.recv_timeout(Duration::from_millis(250)) {
            Ok(Some(request)) => answer(request, service),
            Ok(None) => {}
            Err(_) => break,
        }
    }
}

fn answer(mut request: Request, service: &Service) {
    let began = Instant::now();
    let client_id = request
        .remote_addr()
        .map(|a| a.ip().to_string())
        .unwrap_or_else(|| "unknown".into());
    let method = request.method().clone();
    let url = request.url().to_string();
    let (reply, shown) = match authorize(&request, service, &url) {
        Err(reply) => (reply, hide_token(&url)),
        Ok((path, prefix)) => {
            let shown = match prefix {
                Some(_) => format!("/t/***{path}"),
                None => path.to_string(),
            };
            let reply = match read_body(&mut request) {
                Err(reply) => reply,
                Ok(body) => {
                    let asked = Asked {
                        method: &method,
                        path,
                        body: &body,
                        caller: Caller {
                            id: client_id.clone(),
                            db_host: service.backend.host_for(header(&request, "Host")),
                        },
                        wants_json: wants_json(&request),
                        form: header(&request, "Content-Type").is_some_and(|t| {
                            t.trim().starts_with("application/x-www-form-urlencoded")
                        }),
                        base: base_url(&request, prefix),
                    };
                    route(service, &asked).unwrap_or_else(|err| {
                        eprintln!("pgtmp serve: error: {err:#}");
                        Reply::message(503, format!("{err:#}"))
                    })
                }
            };
            (reply, shown)
        }
    };
    let status = reply.status;
    let mut response = Response::from_string(reply.body).with_status_code(status);
    // Always a valid header: the content types are constants.
    if let Ok(content_type) = Header::from_bytes("Content-Type", reply.content_type) {
        response.add_header(content_type);
    }
    let _ = request.respond(response);
    eprintln!(
        "pgtmp serve: {client_id} {method} {shown} {status} {:.1} ms",
        began.elapsed().as_secs_f64() * 1000.0
    );
}

/// A request as the handlers see it.
struct Asked<'a> {
    method: &'a Method,
    /// The path without the token prefix and the query.
    path: &'a str,
    body: &'a [u8],
    caller: Caller,
    wants_json: bool,
    /// The body is a form (`application/x-www-form-urlencoded`), not JSON.
    form: bool,
    base: String,
}

fn header<'a>(request: &'a Request, name: &'static str) -> Option<&'a str> {
    request
        .headers()
        .iter()
        .find(|h| h.field.equiv(name))
        .map(|h| h.value.as_str())
}

/// faitout answers JSON when the client says Accept (or, with no preference in Accept, as
/// curl's default `*/*`, Content-Type) application/json.
fn wants_json(request: &Request) -> bool {
    match header(request, "Accept").map(str::trim) {
        Some(accept) if accept != "*/*" => accept == "application/json",
        _ => header(request, "Content-Type").is_some_and(|t| t.trim() == "application/json"),
    }
}

/// The URL the client reached serve by, up to and including the token prefix.
fn base_url(request: &Request, prefix: Option<&str>) -> String {
    let host = header(request, "Host").unwrap_or("127.0.0.1");
    match prefix {
        Some(token) => format!("http://{host}/t/{token}/"),
        None => format!("http://{host}/"),
    }
}

/// Equal, in a time that does not depend on where they differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The path to route (query and token prefix removed) and the token when it was in the path;
/// the 401 answer when a token is set and the request does not carry it.
fn authorize<'a>(
    request: &Request,
    service: &'a Service,
    url: &'a str,
) -> Result<(&'a str, Option<&'a str>), Reply> {
    let path = url.split(['?', '#']).next().unwrap_or("/");
    let Some(token) = service.settings.token.as_deref() else {
        return Ok((path, None));
    };
    if let Some(rest) = path.strip_prefix("/t/")
        && let Some((given, tail)) = rest.split_once('/')
        && same(given.as_bytes(), token.as_bytes())
    {
        return Ok((&path[path.len() - tail.len() - 1..], Some(token)));
    }
    let bearer = header(request, "Authorization")
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match bearer {
        Some(given) if same(given.as_bytes(), token.as_bytes()) => Ok((path, None)),
        _ => Err(Reply::message(
            401,
            "this pgtmp serve needs its token: send Authorization: Bearer TOKEN, or start the path with /t/TOKEN/",
        )),
    }
}

/// A URL as logged: a token in the path hidden.
fn hide_token(url: &str) -> String {
    match url
        .strip_prefix("/t/")
        .and_then(|rest| rest.split_once('/'))
    {
        Some((_, tail)) => format!("/t/***/{tail}"),
        None => url.split('?').next().unwrap_or(url).to_string(),
    }
}

/// The body, at most [`BODY_LIMIT`] bytes; the 413 answer for a larger one.
fn read_body(request: &mut Request) -> Result<Vec<u8>, Reply> {
    let too_large = || Reply::message(413, format!("the body is larger than {BODY_LIMIT} bytes"));
    if request.body_length().is_some_and(|n| n > BODY_LIMIT) {
        return Err(too_large());
    }
    let mut body = Vec::new();
    match request
        .as_reader()
        .take(BODY_LIMIT as u64 + 1)
        .read_to_end(&mut body)
    {
        Ok(n) if n > BODY_LIMIT => Err(too_large()),
        Ok(_) => Ok(body),
        Err(err) => Err(Reply::message(400, format!("cannot read the body: {err}"))),
    }
}

fn route(service: &Service, asked: &Asked) -> anyhow::Result<Reply> {
    let parts: Vec<&str> = asked.path.split('/').filter(|p| !p.is_empty()).collect();
    let caller = &asked.caller;
    match (asked.method, parts.as_slice()) {
        (Method::Get, []) => page::front(service, &asked.base),
        (Method::Get, ["stats"]) => page::stats(service),
        (Method::Get, ["new"]) => faitout::new(service, caller, asked.wants_json),
        (Method::Get, ["clone", db]) => faitout::clone(service, caller, db),
        (Method::Get, ["clean", db]) => faitout::clean(service, caller, db),
        (method, ["api", "v1", rest @ ..]) => integresql_route(service, asked, method, rest),
        _ => Ok(Reply::message(
            404,
            format!("no such endpoint: {} {}", asked.method, asked.path),
        )),
    }
}

fn integresql_route(
    service: &Service,
    asked: &Asked,
    method: &Method,
    rest: &[&str],
) -> anyhow::Result<Reply> {
    match (method, rest) {
        (Method::Post, ["templates"]) => {
            integresql::initialize(service, &asked.caller, asked.body, asked.form)
        }
        (Method::Put, ["templates", hash]) => integresql::finalize(service, hash),
        (Method::Delete, ["templates", hash]) => integresql::discard(service, hash),
        (Method::Get, ["templates", hash, "tests"]) => {
            integresql::get_test(service, hash, &asked.caller)
        }
        (Method::Delete, ["templates", hash, "tests", id])
        | (Method::Post, ["templates", hash, "tests", id, "unlock"]) => {
            integresql::give_back(service, hash, id)
        }
        (Method::Post, ["templates", hash, "tests", id, "recreate"]) => {
            integresql::recreate(service, hash, id)
        }
        (Method::Delete, ["admin", "templates"]) => integresql::discard_all(service),
        _ => Ok(Reply::message(
            404,
            format!("no such endpoint: {} {}", asked.method, asked.path),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_compared_whole() {
        assert!(same(b"abc", b"abc"));
        assert!(!same(b"abc", b"abd"));
        assert!(!same(b"abc", b"abcd"));
        assert!(!same(b"", b"a"));
    }

    #[test]
    fn logged_urls_hide_the_token() {
        assert_eq!(hide_token("/t/s3cret/new"), "/t/***/new");
        assert_eq!(hide_token("/new?x=1"), "/new");
    }
}

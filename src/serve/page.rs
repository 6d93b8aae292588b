//! `GET /`, the front page: how to use serve from curl, Python, Java, Go and CI, with the live
//! figures (databases out, templates, pool depth, oldest age) that a script on the page
//! refreshes from `GET /stats`, which gives them as JSON.

use crate::serve::reply::Reply;
use crate::serve::service::Service;
use crate::serve::store;
use anyhow::Result;
use serde_json::json;

/// `GET /stats`.
pub fn stats(service: &Service) -> Result<Reply> {
    let figures = service.db(store::figures)?;
    Ok(Reply::json(
        200,
        &json!({
            "out": figures.out,
            "ready": figures.ready,
            "templates": figures.templates,
            "oldest_age_seconds": figures.oldest_age_seconds,
            "pools": figures.pools,
            "ttl_seconds": service.settings.ttl,
            "pool": service.settings.pool,
            "max_per_client": service.settings.max_per_client,
            "backend": service.backend.shown,
        }),
    ))
}

/// Text made safe for HTML.
fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// `GET /`; `base` is the URL the client used to reach serve (token prefix included), so that
/// the examples work as shown.
pub fn front(service: &Service, base: &str) -> Result<Reply> {
    let figures = service.db(store::figures)?;
    let oldest = figures
        .oldest_age_seconds
        .map(|s| format!("{s:.0} s"))
        .unwrap_or_else(|| "none out".into());
    let page = PAGE
        .replace("{base}", &escape(base))
        .replace("{backend}", &escape(&service.backend.shown))
        .replace("{ttl}", &service.settings.ttl.to_string())
        .replace("{pool}", &service.settings.pool.to_string())
        .replace("{cap}", &service.settings.max_per_client.to_string())
        .replace("{out}", &figures.out.to_string())
        .replace("{templates}", &figures.templates.to_string())
        .replace("{ready}", &figures.ready.to_string())
        .replace("{oldest}", &oldest);
    Ok(Reply::html(page))
}

const PAGE: &str = r#"<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>pgtmp serve</title>
<style>
body { font-family: system-ui, sans-serif; max-width: 52rem; margin: 2rem auto; padding: 0 1rem; color: #222; }
pre { background: #f4f4f4; padding: .6rem .8rem; overflow-x: auto; }
table.figures td { padding: .2rem 1.2rem .2rem 0; }
table.figures td.n { font-weight: bold; text-align: right; }
</style>
</head>
<body data-live="no">
<h1>pgtmp serve</h1>
<p>Throwaway PostgreSQL databases over HTTP, each with its own role and password, dropped
after {ttl} s. Databases live on: {backend}.</p>

<h2>Now</h2>
<table class="figures">
<tr><td>databases out</td><td class="n" id="out">{out}</td></tr>
<tr><td>templates</td><td class="n" id="templates">{templates}</td></tr>
<tr><td>ready in the pool</td><td class="n" id="ready">{ready}</td></tr>
<tr><td>oldest out</td><td class="n" id="oldest">{oldest}</td></tr>
</table>
<p>Pool: {pool} ready per template; at most {cap} databases from <code>/new</code> per client at once.
The same as JSON: <a href="{base}stats">{base}stats</a>.</p>

<h2>One database (faitout's API)</h2>
<pre>url=$(curl -fsS {base}new)          # postgresql://USER:PASSWORD@HOST:PORT/DB
psql "$url" -c 'select 1'
curl -fsS -H 'Accept: application/json' {base}new   # {"dbname", "username", "password", "port", "host"}
curl -fsS {base}clean/DB                            # drop it before its time</pre>

<h2>Python</h2>
<pre>import json, urllib.request, psycopg2
req = urllib.request.Request("{base}new", headers={"Accept": "application/json"})
db = json.load(urllib.request.urlopen(req))
conn = psycopg2.connect(host=db["host"], port=db["port"], user=db["username"],
                        password=db["password"], dbname=db["dbname"])</pre>

<h2>Java</h2>
<pre>var http = java.net.http.HttpClient.newHttpClient();
var url = http.send(java.net.http.HttpRequest.newBuilder(java.net.URI.create("{base}new")).build(),
        java.net.http.HttpResponse.BodyHandlers.ofString()).body();
// postgresql://USER:PASSWORD@HOST:PORT/DB: give JDBC "jdbc:" + url without the user info,
// and the user and password as properties</pre>

<h2>Go</h2>
<pre>resp, _ := http.Get("{base}new")
url, _ := io.ReadAll(resp.Body)
db, _ := sql.Open("postgres", string(url))</pre>

<h2>A template per migration hash (IntegreSQL's API)</h2>
<p>IntegreSQL's client libraries work unchanged with base URL <code>{base}</code>:
<code>POST {base}api/v1/templates {"hash": "..."}</code> gives the template's connection (423: another
runner builds it); migrate it, then <code>PUT {base}api/v1/templates/HASH</code>;
<code>GET {base}api/v1/templates/HASH/tests</code> hands out a ready copy.</p>

<h2>CI</h2>
<pre>export DATABASE_URL=$(curl -fsS {base}new)
make test</pre>

<script>
async function refresh() {
  try {
    const r = await fetch("{base}stats", { cache: "no-store" });
    const s = await r.json();
    document.getElementById("out").textContent = s.out;
    document.getElementById("templates").textContent = s.templates;
    document.getElementById("ready").textContent = s.ready;
    document.getElementById("oldest").textContent =
      s.oldest_age_seconds === null ? "none out" : Math.round(s.oldest_age_seconds) + " s";
    document.body.setAttribute("data-live", "yes");
  } catch (e) {
    document.body.setAttribute("data-live", "error");
  }
}
refresh();
setInterval(refresh, 2000);
</script>
</body>
</html>
"#;

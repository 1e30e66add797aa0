//! The lean push client of `scripts/bench`: one monolithic `PUT` of a file to an upload
//! URL, over HTTP/1.1 or HTTP/2 (ALPN), seconds from connect to the response printed.
//!
//!     push_blob URL CA_PEM FILE 1|2 [AUTHORIZATION]
//!
//! Why not only curl: on the 2-core bench machine curl 7.88 uses 1.0–1.3 CPU-s per GiB to
//! push over HTTP/1.1 and 1.8–2.3 over HTTP/2 (nghttp2 16 KiB DATA frames, each split
//! across TLS records), so an HTTP/2 push measures the client as much as the server. This
//! client (hyper through reqwest, rustls with aws-lc-rs) sends the file in 1 MiB chunks,
//! which hyper's HTTP/2 sends as frames as large as the server allows. The same client is
//! used for Berth and for Distribution.

use std::time::Instant;

use futures_util::stream;
use tokio::io::AsyncReadExt;

const CHUNK: usize = 1 << 20;

fn main() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    if let Err(e) = runtime.block_on(run()) {
        eprintln!("push_blob: {e}");
        std::process::exit(1);
    }
}

async fn run() -> Result<(), String> {
    let args: Vec<String> = std::env::args().collect();
    let (url, ca, file, version, auth) = match args.as_slice() {
        [_, url, ca, file, version] => (url, ca, file, version, None),
        [_, url, ca, file, version, auth] => (url, ca, file, version, Some(auth)),
        _ => return Err("usage: push_blob URL CA_PEM FILE 1|2 [AUTHORIZATION]".into()),
    };
    let pem = std::fs::read(ca).map_err(|e| format!("{ca}: {e}"))?;
    let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| format!("{ca}: {e}"))?;
    let builder = reqwest::Client::builder().tls_certs_only(certs);
    let client = match version.as_str() {
        "1" => builder.http1_only(),
        "2" => builder.http2_prior_knowledge(),
        v => return Err(format!("HTTP version {v}: use 1 or 2")),
    }
    .build()
    .map_err(|e| e.to_string())?;

    let input = tokio::fs::File::open(file)
        .await
        .map_err(|e| format!("{file}: {e}"))?;
    let len = input.metadata().await.map_err(|e| e.to_string())?.len();
    let chunks = stream::try_unfold(input, |mut input| async move {
        let mut buf = Vec::with_capacity(CHUNK);
        while buf.len() < CHUNK {
            if (&mut input)
                .take((CHUNK - buf.len()) as u64)
                .read_to_end(&mut buf)
                .await?
                == 0
            {
                break;
            }
        }
        Ok::<_, std::io::Error>((!buf.is_empty()).then_some((buf, input)))
    });

    let started = Instant::now();
    let mut request = client
        .put(url.as_str())
        .header("content-type", "application/octet-stream")
        .header("content-length", len)
        .body(reqwest::Body::wrap_stream(chunks));
    if let Some(auth) = auth {
        request = request.header("authorization", auth.as_str());
    }
    let response = request.send().await.map_err(|e| format!("PUT: {e:?}"))?;
    let status = response.status();
    let spoke = response.version();
    let body = response.text().await.unwrap_or_default();
    let want = if version == "2" {
        reqwest::Version::HTTP_2
    } else {
        reqwest::Version::HTTP_11
    };
    if spoke != want {
        return Err(format!("spoke {spoke:?}, not {want:?}"));
    }
    if status != reqwest::StatusCode::CREATED {
        return Err(format!("PUT: HTTP {status}: {body}"));
    }
    println!("{:.3}", started.elapsed().as_secs_f64());
    Ok(())
}

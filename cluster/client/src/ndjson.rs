use std::collections::VecDeque;

use futures::{Stream, StreamExt};
use reqwest::Response;
use serde::de::DeserializeOwned;

use crate::ClientError;

/// Longest line accepted in an NDJSON body.
const MAX_LINE: usize = 1 << 20;

/// Parses a newline-delimited JSON body as it arrives.
pub(crate) fn ndjson<T: DeserializeOwned + Send + 'static>(
    resp: Response,
) -> impl Stream<Item = Result<T, ClientError>> + Send {
    struct State<T> {
        body: std::pin::Pin<Box<dyn Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>,
        buf: Vec<u8>,
        ready: VecDeque<T>,
        done: bool,
        url: String,
    }
    let state = State {
        url: resp.url().to_string(),
        body: Box::pin(resp.bytes_stream()),
        buf: Vec::new(),
        ready: VecDeque::new(),
        done: false,
    };
    futures::stream::unfold(state, |mut st| async move {
        loop {
            if let Some(item) = st.ready.pop_front() {
                return Some((Ok(item), st));
            }
            if st.done {
                return None;
            }
            let parsed = match st.body.next().await {
                Some(Ok(chunk)) => {
                    st.buf.extend_from_slice(&chunk);
                    let mut start = 0;
                    let mut result = Ok(());
                    while let Some(pos) = st.buf[start..].iter().position(|&b| b == b'\n') {
                        let line = &st.buf[start..start + pos];
                        start += pos + 1;
                        if let Err(e) = parse_line(line, &mut st.ready, &st.url) {
                            result = Err(e);
                            break;
                        }
                    }
                    st.buf.drain(..start);
                    if result.is_ok() && st.buf.len() > MAX_LINE {
                        result = Err(ClientError::invalid_response(
                            &st.url,
                            "NDJSON line longer than 1 MiB",
                        ));
                    }
                    result
                }
                Some(Err(e)) => Err(ClientError::from(e)),
                None => {
                    st.done = true;
                    let rest = std::mem::take(&mut st.buf);
                    parse_line(&rest, &mut st.ready, &st.url)
                }
            };
            if let Err(e) = parsed {
                st.done = true;
                st.ready.clear();
                return Some((Err(e), st));
            }
        }
    })
}

fn parse_line<T: DeserializeOwned>(
    line: &[u8],
    out: &mut VecDeque<T>,
    url: &str,
) -> Result<(), ClientError> {
    if line.iter().all(u8::is_ascii_whitespace) {
        return Ok(());
    }
    let item = serde_json::from_slice(line)
        .map_err(|e| ClientError::invalid_response(url, format!("bad NDJSON line: {e}")))?;
    out.push_back(item);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines() {
        let mut out = VecDeque::new();
        parse_line::<u32>(b"  \r", &mut out, "u").unwrap();
        parse_line::<u32>(b"7\r", &mut out, "u").unwrap();
        assert_eq!(out, [7]);
        assert!(parse_line::<u32>(b"{", &mut out, "u").is_err());
    }
}

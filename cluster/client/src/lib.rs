//! HTTP client for the dos REST API.

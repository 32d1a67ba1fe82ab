//! API server: the REST interface, erasure-coded PUT and GET pipelines, repair.

//! Harness for the end-to-end tests: starts the real broker binary against the fake therappai.

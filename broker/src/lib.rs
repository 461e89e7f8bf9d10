//! therappai-broker

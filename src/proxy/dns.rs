//! DNS responder (owner: dns helper)

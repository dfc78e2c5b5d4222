//! The API source: reflector caches of the kinds a table is compiled from, a snapshot of them
//! after every change; and what the controller writes back (Ingress status, Events).

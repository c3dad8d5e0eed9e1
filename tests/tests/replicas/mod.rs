//! A student's pool of teacher replicas: discovery, failures, stalls, refusals and rejoins.

mod dns;
mod failover;
mod outage;
mod refused;
mod rejoin;
mod same_server;
mod stall;

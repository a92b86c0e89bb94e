//! What a node says about itself: `daemonStatus` and its nested objects, its
//! peers, its block producer and SNARK worker, the chain's constants.

use async_graphql::{Object, SimpleObject};

use super::NodeView;
use super::account::Account;
use super::scalars::{
    Amount, BlockTime, Fee, GlobalSlotSinceHardFork, Globalslot, InetAddr, PublicKey, Time, UInt32,
};
use crate::simulator::chain;
use crate::simulator::node::SyncStatus;

/// [`chain::GENESIS_MILLIS`] as Mina writes a `Time`.
const GENESIS_TIME: &str = "2021-03-17 00:00:00.000000Z";
/// What the simulated SNARK workers ask for a proof, in nanomina.
pub const SNARK_WORK_FEE: u32 = 5_000_000;

#[derive(SimpleObject)]
#[graphql(name = "Peer")]
pub struct Peer {
    host: String,
    #[graphql(name = "libp2pPort")]
    libp2p_port: i32,
    peer_id: String,
}

#[derive(SimpleObject)]
#[graphql(name = "AddrsAndPorts")]
pub struct AddrsAndPorts {
    external_ip: String,
    bind_ip: String,
    peer: Option<Peer>,
    #[graphql(name = "libp2pPort")]
    libp2p_port: i32,
    client_port: i32,
}

#[derive(SimpleObject)]
#[graphql(name = "ConsensusTime")]
pub struct ConsensusTime {
    epoch: UInt32,
    slot: UInt32,
    global_slot: GlobalSlotSinceHardFork,
    start_time: BlockTime,
    end_time: BlockTime,
}

impl ConsensusTime {
    fn at_global_slot(global_slot: u32) -> Self {
        let start = chain::slot_millis(global_slot);
        Self {
            epoch: UInt32::of(global_slot / chain::SLOTS_PER_EPOCH),
            slot: UInt32::of(global_slot % chain::SLOTS_PER_EPOCH),
            global_slot: GlobalSlotSinceHardFork::of(global_slot),
            start_time: BlockTime::of(start),
            end_time: BlockTime::of(start + chain::SLOT_MILLIS),
        }
    }
}

#[derive(SimpleObject)]
#[graphql(name = "ConsensusConfiguration")]
pub struct ConsensusConfiguration {
    delta: i32,
    k: i32,
    slots_per_epoch: i32,
    /// Milliseconds.
    slot_duration: i32,
    /// Milliseconds.
    epoch_duration: i32,
    genesis_state_timestamp: Time,
    /// Milliseconds.
    acceptable_network_delay: i32,
}

impl ConsensusConfiguration {
    fn mainnet() -> Self {
        let slot = to_int(chain::SLOT_MILLIS);
        Self {
            delta: to_int(chain::DELTA),
            k: to_int(chain::K),
            slots_per_epoch: to_int(chain::SLOTS_PER_EPOCH),
            slot_duration: slot,
            epoch_duration: slot.saturating_mul(to_int(chain::SLOTS_PER_EPOCH)),
            genesis_state_timestamp: Time::of(GENESIS_TIME),
            acceptable_network_delay: slot,
        }
    }
}

#[derive(SimpleObject)]
#[graphql(name = "ConsensusTimeGlobalSlot")]
pub struct ConsensusTimeGlobalSlot {
    consensus_time: ConsensusTime,
    global_slot_since_genesis: Globalslot,
}

/// When the node's block producer wins its next slot.
#[derive(SimpleObject)]
#[graphql(name = "BlockProducerTimings")]
pub struct BlockProducerTimings {
    times: Vec<ConsensusTime>,
    global_slot_since_genesis: Vec<Globalslot>,
    generated_from_consensus_at: ConsensusTimeGlobalSlot,
}

#[derive(SimpleObject)]
#[graphql(name = "Metrics")]
pub struct Metrics {
    block_production_delay: Vec<i32>,
    transaction_pool_diff_received: i32,
    transaction_pool_diff_broadcasted: i32,
    transactions_added_to_pool: i32,
    transaction_pool_size: i32,
    snark_pool_diff_received: i32,
    snark_pool_diff_broadcasted: i32,
    pending_snark_work: i32,
    snark_pool_size: i32,
}

#[derive(SimpleObject)]
#[graphql(name = "GenesisConstants")]
pub struct GenesisConstants {
    account_creation_fee: Fee,
    coinbase: Amount,
    genesis_timestamp: String,
}

impl GenesisConstants {
    pub fn mainnet() -> Self {
        Self {
            account_creation_fee: Fee::of(chain::ACCOUNT_CREATION_FEE),
            coinbase: Amount::of(chain::COINBASE),
            genesis_timestamp: chain::GENESIS_TIMESTAMP.to_owned(),
        }
    }
}

/// The node's SNARK worker.
#[derive(SimpleObject)]
#[graphql(name = "SnarkWorker")]
pub struct SnarkWorker {
    key: PublicKey,
    account: Account,
    fee: Fee,
}

pub fn snark_worker(view: &NodeView) -> SnarkWorker {
    let key = snark_worker_key(view);
    SnarkWorker {
        account: Account::of(&key),
        key: PublicKey(key),
        fee: Fee::of(SNARK_WORK_FEE),
    }
}

/// How much the node trusts a peer.
#[derive(SimpleObject)]
#[graphql(name = "TrustStatusPayload")]
pub struct TrustStatusPayload {
    ip_addr: InetAddr,
    peer_id: String,
    trust: f64,
    banned_status: Option<Time>,
}

pub fn to_int<N: TryInto<i32>>(n: N) -> i32 {
    n.try_into().unwrap_or(i32::MAX)
}

/// The node's `index`-th peer (an address and id derived from the node's).
pub fn peer(view: &NodeView, index: u32) -> Peer {
    Peer {
        host: format!(
            "10.{}.{}.{}",
            (index >> 16) & 0xff,
            (index >> 8) & 0xff,
            index & 0xff
        ),
        libp2p_port: 8302,
        peer_id: format!(
            "12D3KooWSim{}x{}x{index}",
            view.host.replace('.', ""),
            view.port
        ),
    }
}

pub fn peers(view: &NodeView) -> Vec<Peer> {
    (0..view.state.peer_count).map(|i| peer(view, i)).collect()
}

/// The seed peers the node started from: its first three peers, as multiaddrs.
pub fn initial_peers(view: &NodeView) -> Vec<String> {
    (0..view.state.peer_count.min(3))
        .map(|i| {
            let p = peer(view, i);
            format!("/ip4/{}/tcp/{}/p2p/{}", p.host, p.libp2p_port, p.peer_id)
        })
        .collect()
}

/// The node's trust in its peers (at `ip` when given): it trusts none more
/// than others and bans none.
pub fn trust_status(view: &NodeView, ip: Option<&str>) -> Vec<TrustStatusPayload> {
    peers(view)
        .into_iter()
        .filter(|p| ip.is_none_or(|ip| p.host == ip))
        .map(|p| TrustStatusPayload {
            ip_addr: InetAddr(p.host),
            peer_id: p.peer_id,
            trust: 0.0,
            banned_status: None,
        })
        .collect()
}

/// Which of the chain's seven producers the node runs.
pub fn producer_index(view: &NodeView) -> u32 {
    let digest = crate::simulator::base58::field_from(&format!("{}:{}", view.host, view.port));
    u32::from(digest[0]) % 7
}

/// The node's block producer key (it produces the chain's blocks at the
/// heights [`chain::creator`] gives it).
pub fn producer_key(view: &NodeView) -> String {
    chain::creator(producer_index(view))
}

/// The node's SNARK worker key.
pub fn snark_worker_key(view: &NodeView) -> String {
    chain::public_key(&format!("snark-worker-{}", view.host))
}

/// The node's accounts: its block producer's.
pub fn owned_accounts(view: &NodeView) -> Vec<Account> {
    vec![Account::of(&producer_key(view))]
}

/// Proofs in a node's SNARK pool.
const SNARK_POOL_SIZE: u32 = 1;

/// Work in the node's SNARK pool: proofs by its own worker, of the work after
/// its best tip's.
pub fn snark_pool(view: &NodeView) -> Vec<super::block::CompletedWork> {
    let prover = snark_worker_key(view);
    let first = to_int(view.state.blockchain_length).saturating_mul(2);
    (0..to_int(SNARK_POOL_SIZE))
        .map(|i| {
            let id = first.saturating_add(2 * i + 2);
            super::block::CompletedWork::from(chain::SnarkJob {
                prover: prover.clone(),
                fee: u64::from(SNARK_WORK_FEE),
                work_ids: vec![id, id.saturating_add(1)],
            })
        })
        .collect()
}

fn next_block_production(view: &NodeView) -> BlockProducerTimings {
    let tip = view.state.blockchain_length;
    let index = producer_index(view);
    let after = tip.saturating_add(1);
    let next = after.saturating_add((index + 7 - after % 7) % 7);
    let slot = chain::slot_of(next);
    let now = chain::slot_of(tip);
    BlockProducerTimings {
        times: vec![ConsensusTime::at_global_slot(slot)],
        global_slot_since_genesis: vec![Globalslot::of(slot)],
        generated_from_consensus_at: ConsensusTimeGlobalSlot {
            consensus_time: ConsensusTime::at_global_slot(now),
            global_slot_since_genesis: Globalslot::of(now),
        },
    }
}

/// The node's status, each field worked out when asked for (monitoring asks
/// for a few, often).
pub struct DaemonStatus(pub NodeView);

#[Object(name = "DaemonStatus")]
impl DaemonStatus {
    async fn num_accounts(&self) -> Option<i32> {
        Some(230_000)
    }

    async fn blockchain_length(&self) -> Option<i32> {
        Some(to_int(self.0.state.blockchain_length))
    }

    async fn highest_block_length_received(&self) -> i32 {
        to_int(self.0.state.highest_block_length_received)
    }

    async fn highest_unvalidated_block_length_received(&self) -> i32 {
        to_int(self.0.state.highest_unvalidated_block_length_received)
    }

    async fn uptime_secs(&self) -> i32 {
        self.0.uptime_secs
    }

    /// The best tip's staged ledger hash.
    async fn ledger_merkle_root(&self) -> Option<String> {
        Some(chain::staged_ledger_hash(self.0.state.blockchain_length))
    }

    async fn state_hash(&self) -> Option<String> {
        Some(chain::state_hash(self.0.state.blockchain_length))
    }

    async fn chain_id(&self) -> &str {
        &self.0.state.chain_id
    }

    async fn commit_id(&self) -> &str {
        "0000000000000000000000000000000000000000"
    }

    async fn conf_dir(&self) -> &str {
        "/root/.mina-config"
    }

    async fn peers(&self) -> Vec<Peer> {
        peers(&self.0)
    }

    async fn user_commands_sent(&self) -> i32 {
        0
    }

    async fn snark_worker(&self) -> Option<String> {
        Some(snark_worker_key(&self.0))
    }

    async fn snark_work_fee(&self) -> i32 {
        to_int(SNARK_WORK_FEE)
    }

    async fn sync_status(&self) -> SyncStatus {
        self.0.state.sync_status
    }

    async fn catchup_status(&self) -> Option<Vec<String>> {
        None
    }

    async fn block_production_keys(&self) -> Vec<String> {
        vec![producer_key(&self.0)]
    }

    async fn coinbase_receiver(&self) -> Option<String> {
        Some(producer_key(&self.0))
    }

    async fn consensus_time_best_tip(&self) -> Option<ConsensusTime> {
        Some(ConsensusTime::at_global_slot(chain::slot_of(
            self.0.state.blockchain_length,
        )))
    }

    async fn global_slot_since_genesis_best_tip(&self) -> Option<i32> {
        Some(to_int(chain::slot_of(self.0.state.blockchain_length)))
    }

    async fn next_block_production(&self) -> Option<BlockProducerTimings> {
        Some(next_block_production(&self.0))
    }

    async fn consensus_time_now(&self) -> ConsensusTime {
        let s = &self.0.state;
        ConsensusTime::at_global_slot(chain::slot_of(
            s.highest_block_length_received.max(s.blockchain_length),
        ))
    }

    async fn consensus_mechanism(&self) -> &str {
        "proof_of_stake"
    }

    async fn consensus_configuration(&self) -> ConsensusConfiguration {
        ConsensusConfiguration::mainnet()
    }

    async fn addrs_and_ports(&self) -> AddrsAndPorts {
        AddrsAndPorts {
            external_ip: self.0.host.clone(),
            bind_ip: "0.0.0.0".to_owned(),
            peer: Some(peer(&self.0, u32::MAX)),
            libp2p_port: 8302,
            client_port: i32::from(self.0.port),
        }
    }

    async fn metrics(&self) -> Metrics {
        let pool = to_int(chain::POOLED_PAYMENTS + chain::POOLED_ZKAPP_COMMANDS);
        Metrics {
            block_production_delay: vec![0; 7],
            transaction_pool_diff_received: 0,
            transaction_pool_diff_broadcasted: 0,
            transactions_added_to_pool: pool,
            transaction_pool_size: pool,
            snark_pool_diff_received: 0,
            snark_pool_diff_broadcasted: 0,
            pending_snark_work: 0,
            snark_pool_size: to_int(SNARK_POOL_SIZE),
        }
    }
}

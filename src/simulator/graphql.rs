//! The simulated daemon's GraphQL schema: the monitoring subset of Mina's schema,
//! with Mina's exact type names, field names and nullability (checked against the
//! embedded Mina schema by `tests/schema.rs`).

use async_graphql::{EmptyMutation, Interface, Object, SimpleObject};

use super::node::{NodeState, SyncStatus};
use super::subscriptions::Subscription;

/// What a query is answered from: a node's state at the moment of the request.
#[derive(Debug, Clone)]
pub struct NodeView {
    pub host: String,
    pub port: u16,
    pub state: NodeState,
    pub uptime_secs: i32,
}

/// The schema type served by every simulated node.
pub type MinaSchema = async_graphql::Schema<Query, EmptyMutation, Subscription>;

/// Builds the schema; it is stateless, the node's view comes with each request.
pub fn schema() -> MinaSchema {
    async_graphql::Schema::build(Query, EmptyMutation, Subscription)
        .limit_depth(32)
        .limit_complexity(10_000)
        .finish()
}

/// Mina's numeric and hash scalars travel as JSON strings.
macro_rules! string_scalar {
    ($($name:ident),* $(,)?) => {$(
        #[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub String);
        async_graphql::scalar!($name);
    )*};
}

string_scalar!(
    UInt32,
    GlobalSlotSinceHardFork,
    BlockTime,
    StateHash,
    Length,
    Epoch,
    Slot,
    Globalslot,
    PublicKey,
    TokenId,
    AccountNonce,
    Balance,
    Amount,
    Fee,
    TransactionId,
    TransactionHash,
    UserCommandKind
);

/// The default token's id (MINA itself).
pub const DEFAULT_TOKEN: &str = "wSHV2S4qX9jFsLjQo8r1BsMLH2ZRKsZx6EJd1sbozGPieEC4Jf";

/// Mina's slots per epoch and slot duration, for the consensus-time fields.
const SLOTS_PER_EPOCH: u32 = 7140;
const SLOT_MILLIS: u64 = 180_000;
const GENESIS_MILLIS: u64 = 1_615_939_200_000;

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
        let start = GENESIS_MILLIS + u64::from(global_slot) * SLOT_MILLIS;
        Self {
            epoch: UInt32((global_slot / SLOTS_PER_EPOCH).to_string()),
            slot: UInt32((global_slot % SLOTS_PER_EPOCH).to_string()),
            global_slot: GlobalSlotSinceHardFork(global_slot.to_string()),
            start_time: BlockTime(start.to_string()),
            end_time: BlockTime((start + SLOT_MILLIS).to_string()),
        }
    }
}

#[derive(SimpleObject)]
#[graphql(name = "DaemonStatus")]
pub struct DaemonStatus {
    num_accounts: Option<i32>,
    blockchain_length: Option<i32>,
    highest_block_length_received: i32,
    highest_unvalidated_block_length_received: i32,
    uptime_secs: i32,
    ledger_merkle_root: Option<String>,
    state_hash: Option<String>,
    chain_id: String,
    commit_id: String,
    conf_dir: String,
    peers: Vec<Peer>,
    user_commands_sent: i32,
    snark_worker: Option<String>,
    snark_work_fee: i32,
    sync_status: SyncStatus,
    catchup_status: Option<Vec<String>>,
    block_production_keys: Vec<String>,
    coinbase_receiver: Option<String>,
    consensus_time_best_tip: Option<ConsensusTime>,
    global_slot_since_genesis_best_tip: Option<i32>,
    consensus_time_now: ConsensusTime,
    consensus_mechanism: String,
    addrs_and_ports: AddrsAndPorts,
}

#[derive(SimpleObject)]
#[graphql(name = "ConsensusState")]
pub struct ConsensusState {
    blockchain_length: Length,
    block_height: Length,
    epoch: Epoch,
    slot: Slot,
    slot_since_genesis: Globalslot,
}

#[derive(SimpleObject)]
#[graphql(name = "BlockchainState")]
pub struct BlockchainState {
    date: BlockTime,
    utc_date: BlockTime,
}

#[derive(SimpleObject)]
#[graphql(name = "ProtocolState")]
pub struct ProtocolState {
    previous_state_hash: StateHash,
    blockchain_state: BlockchainState,
    consensus_state: ConsensusState,
}

#[derive(SimpleObject)]
#[graphql(name = "Block")]
pub struct Block {
    state_hash: StateHash,
    protocol_state: ProtocolState,
    command_transaction_count: i32,
    creator_account: Account,
}

#[derive(SimpleObject)]
#[graphql(name = "AnnotatedBalance")]
pub struct AnnotatedBalance {
    total: Balance,
    liquid: Option<Balance>,
    locked: Option<Balance>,
}

#[derive(SimpleObject)]
#[graphql(name = "Account")]
pub struct Account {
    public_key: PublicKey,
    token_id: TokenId,
    balance: AnnotatedBalance,
    nonce: Option<AccountNonce>,
    delegate: Option<PublicKey>,
}

/// A payment waiting in the node's transaction pool.
#[derive(Clone)]
pub struct UserCommandPayment {
    id: TransactionId,
    hash: TransactionHash,
    nonce: i32,
    amount: Amount,
    fee: Fee,
    from: PublicKey,
    to: PublicKey,
    memo: String,
}

#[Object(name = "UserCommandPayment")]
impl UserCommandPayment {
    async fn id(&self) -> &TransactionId {
        &self.id
    }
    async fn hash(&self) -> &TransactionHash {
        &self.hash
    }
    async fn kind(&self) -> UserCommandKind {
        UserCommandKind("PAYMENT".to_owned())
    }
    async fn nonce(&self) -> i32 {
        self.nonce
    }
    async fn amount(&self) -> &Amount {
        &self.amount
    }
    async fn fee(&self) -> &Fee {
        &self.fee
    }
    async fn token(&self) -> TokenId {
        TokenId(DEFAULT_TOKEN.to_owned())
    }
    async fn fee_token(&self) -> TokenId {
        TokenId(DEFAULT_TOKEN.to_owned())
    }
    async fn memo(&self) -> &str {
        &self.memo
    }
    async fn is_delegation(&self) -> bool {
        false
    }
    async fn from(&self) -> &PublicKey {
        &self.from
    }
    async fn to(&self) -> &PublicKey {
        &self.to
    }
    async fn valid_until(&self) -> Globalslot {
        Globalslot(u32::MAX.to_string())
    }
}

/// Mina's transactions of users (payments and delegations; the simulated pool
/// holds payments).
// Two fields of one type read as one attribute twice to clippy.
#[allow(clippy::duplicated_attributes)]
#[derive(Interface)]
#[graphql(
    name = "UserCommand",
    field(name = "id", ty = "&TransactionId"),
    field(name = "hash", ty = "&TransactionHash"),
    field(name = "kind", ty = "UserCommandKind"),
    field(name = "nonce", ty = "i32"),
    field(name = "amount", ty = "&Amount"),
    field(name = "fee", ty = "&Fee"),
    field(name = "token", ty = "TokenId"),
    field(name = "fee_token", ty = "TokenId"),
    field(name = "memo", ty = "&str"),
    field(name = "is_delegation", ty = "bool"),
    field(name = "from", ty = "&PublicKey"),
    field(name = "to", ty = "&PublicKey"),
    field(name = "valid_until", ty = "Globalslot")
)]
pub enum UserCommand {
    Payment(UserCommandPayment),
}

/// A deterministic, Mina-looking public key (`B62q…`, 55 characters) for `seed`.
pub fn public_key(seed: &str) -> String {
    let digest = seed.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    const ALPHABET: &[u8] = b"123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz";
    let mut key = String::from("B62q");
    let mut state = digest;
    while key.len() < 55 {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        key.push(char::from(
            ALPHABET[(state >> 58) as usize % ALPHABET.len()],
        ));
    }
    key
}

/// An account as a node reports it: a balance derived from the key, nonce 0
/// (the simulated ledger knows every well-formed key).
fn account(key: &str, token: Option<&str>) -> Account {
    let balance =
        1_000_000_000_000_u64 + u64::from(key.bytes().map(u32::from).sum::<u32>()) * 1_000_000;
    Account {
        public_key: PublicKey(key.to_owned()),
        token_id: TokenId(token.unwrap_or(DEFAULT_TOKEN).to_owned()),
        balance: AnnotatedBalance {
            total: Balance(balance.to_string()),
            liquid: Some(Balance(balance.to_string())),
            locked: Some(Balance("0".to_owned())),
        },
        nonce: Some(AccountNonce("0".to_owned())),
        delegate: Some(PublicKey(key.to_owned())),
    }
}

/// The payments in a node's pool: two from one sender.
fn pool(view: &NodeView) -> Vec<UserCommandPayment> {
    let from = public_key(&format!("sender-{}", view.host));
    (0..2)
        .map(|i| {
            let id = format!("{from}-{i}");
            UserCommandPayment {
                id: TransactionId(format!("Ckp{}", &public_key(&id)[4..])),
                hash: TransactionHash(format!("5Ju{}", &public_key(&format!("hash-{id}"))[4..])),
                nonce: i,
                amount: Amount(((i as u64 + 1) * 1_000_000_000).to_string()),
                fee: Fee("10000000".to_owned()),
                from: PublicKey(from.clone()),
                to: PublicKey(public_key(&format!("receiver-{i}"))),
                memo: String::new(),
            }
        })
        .collect()
}

/// A deterministic, Mina-looking state hash for a block height.
pub fn state_hash(height: u32) -> String {
    format!(
        "3NK{:0>49}",
        format!(
            "{:x}",
            u64::from(height).wrapping_mul(0x9E37_79B9_7F4A_7C15)
        )
    )
}

/// Global slot of a block: the simulator produces one block every other slot.
fn slot_of(height: u32) -> u32 {
    height.saturating_mul(2)
}

fn to_int(n: u32) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

fn peer(view: &NodeView, index: u32) -> Peer {
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

pub(super) fn block(height: u32) -> Block {
    let slot = slot_of(height);
    let creator = public_key(&format!("producer-{}", height % 7));
    let time = BlockTime((GENESIS_MILLIS + u64::from(slot) * SLOT_MILLIS).to_string());
    Block {
        state_hash: StateHash(state_hash(height)),
        protocol_state: ProtocolState {
            previous_state_hash: StateHash(state_hash(height.saturating_sub(1))),
            blockchain_state: BlockchainState {
                date: time.clone(),
                utc_date: time,
            },
            consensus_state: ConsensusState {
                blockchain_length: Length(height.to_string()),
                block_height: Length(height.to_string()),
                epoch: Epoch((slot / SLOTS_PER_EPOCH).to_string()),
                slot: Slot((slot % SLOTS_PER_EPOCH).to_string()),
                slot_since_genesis: Globalslot(slot.to_string()),
            },
        },
        command_transaction_count: to_int(height % 5),
        creator_account: account(&creator, None),
    }
}

/// Mina's root query type (named `query` in its schema).
pub struct Query;

#[Object(name = "query")]
impl Query {
    async fn sync_status(
        &self,
        ctx: &async_graphql::Context<'_>,
    ) -> async_graphql::Result<SyncStatus> {
        Ok(ctx.data::<NodeView>()?.state.sync_status)
    }

    async fn version(
        &self,
        ctx: &async_graphql::Context<'_>,
    ) -> async_graphql::Result<Option<String>> {
        Ok(Some(ctx.data::<NodeView>()?.state.version.clone()))
    }

    async fn daemon_status(
        &self,
        ctx: &async_graphql::Context<'_>,
    ) -> async_graphql::Result<DaemonStatus> {
        let view = ctx.data::<NodeView>()?;
        let s = &view.state;
        let peers = (0..s.peer_count).map(|i| peer(view, i)).collect();
        let best_slot = slot_of(s.blockchain_length);
        let now_slot = slot_of(s.highest_block_length_received.max(s.blockchain_length));
        Ok(DaemonStatus {
            num_accounts: Some(230_000),
            blockchain_length: Some(to_int(s.blockchain_length)),
            highest_block_length_received: to_int(s.highest_block_length_received),
            highest_unvalidated_block_length_received: to_int(
                s.highest_unvalidated_block_length_received,
            ),
            uptime_secs: view.uptime_secs,
            ledger_merkle_root: Some(
                "jx7buQVWFLsXTtzRgSxbYcT8EYLS8KCZbLrfDcJxMtyy4thw2Ee".to_owned(),
            ),
            state_hash: Some(state_hash(s.blockchain_length)),
            chain_id: s.chain_id.clone(),
            commit_id: "0000000000000000000000000000000000000000".to_owned(),
            conf_dir: "/root/.mina-config".to_owned(),
            peers,
            user_commands_sent: 0,
            snark_worker: None,
            snark_work_fee: 0,
            sync_status: s.sync_status,
            catchup_status: None,
            block_production_keys: Vec::new(),
            coinbase_receiver: None,
            consensus_time_best_tip: Some(ConsensusTime::at_global_slot(best_slot)),
            global_slot_since_genesis_best_tip: Some(to_int(best_slot)),
            consensus_time_now: ConsensusTime::at_global_slot(now_slot),
            consensus_mechanism: "proof_of_stake".to_owned(),
            addrs_and_ports: AddrsAndPorts {
                external_ip: view.host.clone(),
                bind_ip: "0.0.0.0".to_owned(),
                peer: Some(peer(view, u32::MAX)),
                libp2p_port: 8302,
                client_port: i32::from(view.port),
            },
        })
    }

    /// The network the node is on.
    #[graphql(name = "networkID")]
    async fn network_id(&self, ctx: &async_graphql::Context<'_>) -> async_graphql::Result<String> {
        let chain = &ctx.data::<NodeView>()?.state.chain_id;
        Ok(format!("mina:{}", chain.get(..8).unwrap_or(chain)))
    }

    /// The node's peers (as `daemonStatus.peers`).
    async fn get_peers(
        &self,
        ctx: &async_graphql::Context<'_>,
    ) -> async_graphql::Result<Vec<Peer>> {
        let view = ctx.data::<NodeView>()?;
        Ok((0..view.state.peer_count).map(|i| peer(view, i)).collect())
    }

    /// An account of the ledger: any key that looks like one (`B62…`) has one.
    async fn account(
        &self,
        public_key: PublicKey,
        token: Option<TokenId>,
    ) -> async_graphql::Result<Option<Account>> {
        let key = &public_key.0;
        if !(key.starts_with("B62") && key.len() == 55) {
            return Err(async_graphql::Error::new(format!(
                "Couldn't parse public key {key:?}"
            )));
        }
        Ok(Some(account(key, token.as_ref().map(|t| t.0.as_str()))))
    }

    /// The node's pending user commands, of `publicKey` when given.
    async fn pooled_user_commands(
        &self,
        ctx: &async_graphql::Context<'_>,
        public_key: Option<PublicKey>,
        ids: Option<Vec<async_graphql::ID>>,
        hashes: Option<Vec<String>>,
    ) -> async_graphql::Result<Vec<UserCommand>> {
        let view = ctx.data::<NodeView>()?;
        Ok(pool(view)
            .into_iter()
            .filter(|c| public_key.as_ref().is_none_or(|k| k.0 == c.from.0))
            .filter(|c| {
                ids.as_ref()
                    .is_none_or(|ids| ids.iter().any(|i| i.as_str() == c.id.0))
            })
            .filter(|c| hashes.as_ref().is_none_or(|h| h.contains(&c.hash.0)))
            .map(UserCommand::Payment)
            .collect())
    }

    /// The newest blocks of the best chain, oldest first.
    async fn best_chain(
        &self,
        ctx: &async_graphql::Context<'_>,
        max_length: Option<i32>,
    ) -> async_graphql::Result<Option<Vec<Block>>> {
        let height = ctx.data::<NodeView>()?.state.blockchain_length;
        let wanted = u32::try_from(max_length.unwrap_or(10).clamp(0, 290)).unwrap_or(0);
        let first = height.saturating_sub(wanted.saturating_sub(1)).max(1);
        if wanted == 0 || height == 0 {
            return Ok(Some(Vec::new()));
        }
        Ok(Some((first..=height).map(block).collect()))
    }
}

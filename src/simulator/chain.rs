//! The simulated chain: each block, hash, epoch, account and transaction is
//! derived from a height or a key, the same on every node and in every query
//! (`bestChain`, `block`, `genesisBlock`, the `newBlock` subscription), so that
//! answers agree with each other. Pure: no I/O, no clock.

use base64::Engine;

use super::base58::{self, Kind};

/// Slots per epoch, slot length and genesis time of Mina's mainnet.
pub const SLOTS_PER_EPOCH: u32 = 7140;
pub const SLOT_MILLIS: u64 = 180_000;
pub const GENESIS_MILLIS: u64 = 1_615_939_200_000;
/// [`GENESIS_MILLIS`] as Mina writes it.
pub const GENESIS_TIMESTAMP: &str = "2021-03-17T00:00:00.000000Z";
/// The simulated chain has a block every other slot.
pub const BLOCKS_PER_EPOCH: u32 = SLOTS_PER_EPOCH / 2;
/// Mina's `k`: the transition frontier holds the newest `K` blocks.
pub const K: u32 = 290;
pub const DELTA: u32 = 0;
/// Nanomina.
pub const COINBASE: u64 = 720_000_000_000;
pub const ACCOUNT_CREATION_FEE: u64 = 1_000_000_000;
pub const GENESIS_TOTAL_CURRENCY: u64 = 805_385_692_840_039_233;
/// Mainnet's genesis ledger hash.
pub const GENESIS_LEDGER_HASH: &str = "jx7buQVWFLsXTtzRgSxbYcT8EYLS8KCZbLrfDcJxMtyy4thw2Ee";
/// The default token's id (MINA itself): the field 1.
pub const DEFAULT_TOKEN: &str = "wSHV2S4qX9jFsLjQo8r1BsMLH2ZRKsZx6EJd1sbozGPieEC4Jf";
/// Mainnet's chain id (a node with another is on a test network).
pub const MAINNET_CHAIN_ID: &str =
    "a7351abc7ddf2ea92d1b38cc8e636c271c1dfd2c081c637f62ebc2af34eb7cc1";
/// Mina's current transaction version (`txnVersion` of permissions).
pub const TXN_VERSION: u32 = 3;
/// The keys the simulated transactions move funds between.
const ACCOUNTS: u32 = 50;
/// The zkApps the simulated zkApp commands update.
const ZKAPPS: u32 = 3;
/// A snarked ledger every this many blocks.
const PROOF_EVERY: u32 = 5;

/// The network of a chain id: `mainnet` or `testnet`.
pub fn network(chain_id: &str) -> &'static str {
    if chain_id == MAINNET_CHAIN_ID {
        "mainnet"
    } else {
        "testnet"
    }
}

/// Blocks in the transition frontier of a node whose best tip is `tip`.
pub fn frontier(tip: u32) -> std::ops::RangeInclusive<u32> {
    tip.saturating_sub(K - 1).max(1)..=tip
}

/// Global slot of the block at `height` (genesis, height 1, is slot 0).
pub fn slot_of(height: u32) -> u32 {
    height.saturating_sub(1).saturating_mul(2)
}

pub fn epoch_of(height: u32) -> u32 {
    slot_of(height) / SLOTS_PER_EPOCH
}

/// Start of a slot, in milliseconds since the Unix epoch.
pub fn slot_millis(slot: u32) -> u64 {
    GENESIS_MILLIS + u64::from(slot) * SLOT_MILLIS
}

fn first_height_of_epoch(epoch: u32) -> u32 {
    epoch.saturating_mul(BLOCKS_PER_EPOCH).saturating_add(1)
}

/// The last height in the first two thirds of an epoch (its seed is locked then).
fn lock_height_of_epoch(epoch: u32) -> u32 {
    first_height_of_epoch(epoch).saturating_add(BLOCKS_PER_EPOCH * 2 / 3 - 1)
}

/// A Mina-looking public key (`B62…`, 55 characters) for `seed`; not necessarily
/// a point of the curve, which only a daemon reading it as input would check.
pub fn public_key(seed: &str) -> String {
    let x = base58::field_from(&format!("public-key/{seed}"));
    base58::public_key(&x, x[0] & 1 == 1)
}

/// The state hash of the block at `height` (the height is kept in the hash, so
/// that [`height_of`] finds it back).
pub fn state_hash(height: u32) -> String {
    base58::field(Kind::StateHash, &state_field(height))
}

fn state_field(height: u32) -> [u8; 32] {
    let mut field = base58::field_from(&format!("state-hash/{height}"));
    field[..4].copy_from_slice(&height.to_le_bytes());
    field
}

/// The height of a block by its state hash, if the hash is one of this chain's.
pub fn height_of(state_hash: &str) -> Option<u32> {
    let field = base58::decode_field(Kind::StateHash, state_hash)?;
    let height = u32::from_le_bytes([field[0], field[1], field[2], field[3]]);
    (height > 0 && state_field(height) == field).then_some(height)
}

/// The state hash field of the block at `height`, in decimal.
pub fn state_hash_decimal(height: u32) -> String {
    base58::decimal(&state_field(height))
}

/// The state hash of the field 0: the checkpoints before the first epoch.
pub fn zero_state_hash() -> String {
    base58::field(Kind::StateHash, &[0; 32])
}

fn ledger_hash(seed: &str) -> String {
    base58::field(Kind::LedgerHash, &base58::field_from(seed))
}

/// Whether the block at `height` emits a ledger proof (its snarked ledger changes).
pub fn proof_emitted(height: u32) -> bool {
    height.is_multiple_of(PROOF_EVERY)
}

pub fn snarked_ledger_hash(height: u32) -> String {
    match height - height % PROOF_EVERY {
        0 => GENESIS_LEDGER_HASH.to_owned(),
        proved => ledger_hash(&format!("snarked-ledger/{proved}")),
    }
}

pub fn staged_ledger_hash(height: u32) -> String {
    if height <= 1 {
        GENESIS_LEDGER_HASH.to_owned()
    } else {
        ledger_hash(&format!("staged-ledger/{height}"))
    }
}

/// The staged ledger's auxiliary hash, pending coinbase auxiliary hash and
/// pending coinbase hash after the block at `height`.
pub fn staged_ledger_extras(height: u32) -> [String; 3] {
    [
        base58::raw(
            Kind::StagedLedgerAuxHash,
            &base58::field_from(&format!("aux/{height}")),
        ),
        base58::raw(
            Kind::PendingCoinbaseAuxHash,
            &base58::field_from(&format!("pending-coinbase-aux/{height}")),
        ),
        base58::field(
            Kind::ReceiptChainHash,
            &base58::field_from(&format!("pending-coinbase/{height}")),
        ),
    ]
}

/// The block body's hash, in hexadecimal.
pub fn body_reference(height: u32) -> String {
    base58::field_from(&format!("body/{height}"))
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

pub fn vrf_output(height: u32) -> String {
    base58::digest(
        Kind::VrfOutput,
        &base58::field_from(&format!("vrf/{height}")),
    )
}

/// A field element for `seed`, in decimal.
pub fn field_decimal(seed: &str) -> String {
    base58::decimal(&base58::field_from(seed))
}

/// Currency in existence after the block at `height`: one coinbase per block.
pub fn total_currency(height: u32) -> u64 {
    GENESIS_TOTAL_CURRENCY
        .saturating_add(u64::from(height.saturating_sub(1)).saturating_mul(COINBASE))
}

/// Blocks that have at least one other block of the same window: the
/// simulated chain fills every other slot.
pub fn min_window_density(height: u32) -> u32 {
    if height <= 1 { 77 } else { 38 }
}

/// The producer of the block at `height` (one of seven).
pub fn creator(height: u32) -> String {
    public_key(&format!("producer-{}", height % 7))
}

/// A ledger of an epoch and its seed and checkpoints, as consensus states carry
/// them (`stakingEpochData`, `nextEpochData`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EpochData {
    pub ledger_hash: String,
    pub total_currency: u64,
    pub seed: String,
    pub start_checkpoint: String,
    pub lock_checkpoint: String,
    pub epoch_length: u32,
}

fn seed_after(height: u32) -> String {
    if height <= 1 {
        return base58::field(Kind::EpochSeed, &[0; 32]);
    }
    let locked = height.min(lock_height_of_epoch(epoch_of(height)));
    base58::field(
        Kind::EpochSeed,
        &base58::field_from(&format!("seed/{locked}")),
    )
}

/// The data of the epoch after the one of `height`: its ledger is the snarked
/// ledger at the start of the current epoch, its seed grows until the lock
/// checkpoint.
pub fn next_epoch_data(height: u32) -> EpochData {
    let epoch = epoch_of(height);
    let first = first_height_of_epoch(epoch);
    let (ledger_hash, total, start) = if epoch == 0 {
        (
            GENESIS_LEDGER_HASH.to_owned(),
            GENESIS_TOTAL_CURRENCY,
            zero_state_hash(),
        )
    } else {
        (
            snarked_ledger_hash(first - 1),
            total_currency(first - 1),
            state_hash(first - 1),
        )
    };
    let lock = if height <= 1 {
        zero_state_hash()
    } else {
        state_hash(height.min(lock_height_of_epoch(epoch)))
    };
    EpochData {
        ledger_hash,
        total_currency: total,
        seed: seed_after(height),
        start_checkpoint: start,
        lock_checkpoint: lock,
        epoch_length: height.saturating_sub(first) + 1,
    }
}

/// The data of the epoch whose ledger decides who produces the blocks of the
/// epoch of `height`: what the last block of the previous epoch had as
/// [`next_epoch_data`], the genesis ledger in the first epoch.
pub fn staking_epoch_data(height: u32) -> EpochData {
    match epoch_of(height) {
        0 => EpochData {
            ledger_hash: GENESIS_LEDGER_HASH.to_owned(),
            total_currency: GENESIS_TOTAL_CURRENCY,
            seed: seed_after(1),
            start_checkpoint: zero_state_hash(),
            lock_checkpoint: zero_state_hash(),
            epoch_length: 1,
        },
        epoch => next_epoch_data(first_height_of_epoch(epoch) - 1),
    }
}

/// A signed command (payment or stake delegation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedCommand {
    pub id: String,
    pub hash: String,
    pub delegation: bool,
    pub nonce: u32,
    pub from: String,
    pub to: String,
    pub amount: u64,
    pub fee: u64,
    pub memo: String,
    pub valid_until: u32,
}

/// One account update of a zkApp command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountUpdate {
    pub public_key: String,
    /// Nanomina, negative for a payment out of the account.
    pub balance_change: i64,
    pub increment_nonce: bool,
    pub call_depth: i32,
    pub call_data: String,
    /// Each action is a list of field elements (decimal).
    pub actions: Vec<Vec<String>>,
    pub events: Vec<Vec<String>>,
    pub signature: String,
    /// What the update requires of the zkApp's first state field (decimal):
    /// its value, unless the command failed on it.
    pub state_precondition: String,
}

/// Why a zkApp command failed: Mina's failures of the account update at `index`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub index: u32,
    pub failures: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZkappCommand {
    /// Of the block holding it; 0 in a pool.
    pub height: u32,
    pub id: String,
    pub hash: String,
    pub fee_payer: String,
    pub fee: u64,
    pub nonce: u32,
    pub memo: String,
    pub signature: String,
    pub updates: Vec<AccountUpdate>,
    pub failure: Option<Failure>,
}

/// A fee paid to a key by a block: Mina's `Fee_transfer` or
/// `Fee_transfer_via_coinbase`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeeTransfer {
    pub recipient: String,
    pub fee: u64,
    pub via_coinbase: bool,
}

/// Completed SNARK work a block bought.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnarkJob {
    pub prover: String,
    pub fee: u64,
    pub work_ids: Vec<i32>,
}

/// A transaction id: base64 of a tag, where it is (a block's height or a
/// pool's scope), its index there, and filler that makes it look like a
/// serialized command.
fn command_id(tag: u8, scope: [u8; 4], index: u8) -> (String, String) {
    let mut bytes = vec![tag];
    bytes.extend_from_slice(&scope);
    bytes.push(index);
    let seed: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    bytes.extend_from_slice(&base58::field_from(&format!("command/{seed}")));
    let hash = base58::digest(
        Kind::TransactionHash,
        &base58::field_from(&format!("command-hash/{seed}")),
    );
    (
        base64::engine::general_purpose::STANDARD.encode(&bytes),
        hash,
    )
}

const SIGNED_IN_BLOCK: u8 = b'S';
const ZKAPP_IN_BLOCK: u8 = b'Z';
const SIGNED_IN_POOL: u8 = b's';
const ZKAPP_IN_POOL: u8 = b'z';

fn signature(seed: &str) -> String {
    base58::signature(
        &base58::field_from(&format!("signature-r/{seed}")),
        &base58::field_from(&format!("signature-s/{seed}")),
    )
}

fn ledger_account(n: u32) -> String {
    public_key(&format!("account-{}", n % ACCOUNTS))
}

/// The zkApp accounts that the simulated zkApp commands update.
pub fn zkapps() -> Vec<String> {
    (0..ZKAPPS)
        .map(|n| public_key(&format!("zkapp-{n}")))
        .collect()
}

/// The user commands (payments, and a delegation now and then) and zkApp
/// commands of the block at `height`: `height % 5` in all, none in genesis.
pub fn commands(height: u32) -> (Vec<SignedCommand>, Vec<ZkappCommand>) {
    let count = if height <= 1 { 0 } else { height % 5 };
    let zkapp_count = count / 2;
    let scope = height.to_le_bytes();
    let signed = (0..count - zkapp_count)
        .map(|i| {
            let (id, hash) = command_id(SIGNED_IN_BLOCK, scope, i as u8);
            let delegation = height.wrapping_add(i) % 4 == 3;
            SignedCommand {
                id,
                hash,
                delegation,
                nonce: height / 7 + i,
                from: ledger_account(height.wrapping_mul(3).wrapping_add(i)),
                to: if delegation {
                    creator(height.wrapping_add(i))
                } else {
                    ledger_account(height.wrapping_mul(3).wrapping_add(i + 1))
                },
                amount: if delegation {
                    0
                } else {
                    u64::from(height % 97 + 1) * 1_000_000_000
                },
                fee: 10_000_000 + u64::from(i) * 1_000_000,
                memo: base58::memo(""),
                valid_until: u32::MAX,
            }
        })
        .collect();
    let zkapp_accounts = zkapps();
    let zkapp = (0..zkapp_count)
        .map(|i| {
            let (id, hash) = command_id(ZKAPP_IN_BLOCK, scope, i as u8);
            let target = &zkapp_accounts[(height.wrapping_add(i) % ZKAPPS) as usize];
            zkapp_command(
                id,
                hash,
                ledger_account(height.wrapping_mul(5).wrapping_add(i)),
                height / 11 + i,
                target,
                height,
                i,
            )
        })
        .collect();
    (signed, zkapp)
}

fn zkapp_command(
    id: String,
    hash: String,
    fee_payer: String,
    nonce: u32,
    target: &str,
    height: u32,
    index: u32,
) -> ZkappCommand {
    let seed = id.clone();
    let failure = height
        .wrapping_add(index)
        .is_multiple_of(7)
        .then(|| Failure {
            index: 1,
            failures: vec!["Account_app_state_precondition_unsatisfied".to_owned()],
        });
    let state_precondition = if failure.is_some() {
        field_decimal(&format!("stale-state/{seed}"))
    } else {
        app_state(target, 0)
    };
    ZkappCommand {
        height,
        id,
        hash,
        signature: signature(&format!("fee-payer/{seed}")),
        fee_payer,
        fee: 100_000_000,
        nonce,
        memo: base58::memo("zkapp"),
        updates: vec![AccountUpdate {
            public_key: target.to_owned(),
            balance_change: 0,
            increment_nonce: false,
            call_depth: 0,
            call_data: "0".to_owned(),
            actions: vec![vec![
                field_decimal(&format!("action/{seed}/0")),
                field_decimal(&format!("action/{seed}/1")),
            ]],
            events: Vec::new(),
            signature: signature(&format!("update/{seed}")),
            state_precondition,
        }],
        failure,
    }
}

/// The coinbase receiver's fee transfers of the block at `height` (the fees
/// of its commands) and the fees of the SNARK work it bought.
pub fn fee_transfers(height: u32) -> Vec<FeeTransfer> {
    let (signed, zkapp) = commands(height);
    let fees: u64 =
        signed.iter().map(|c| c.fee).sum::<u64>() + zkapp.iter().map(|c| c.fee).sum::<u64>();
    let mut transfers = Vec::new();
    if fees > 0 {
        transfers.push(FeeTransfer {
            recipient: creator(height),
            fee: fees,
            via_coinbase: false,
        });
    }
    transfers.extend(snark_jobs(height).into_iter().map(|job| FeeTransfer {
        recipient: job.prover,
        fee: job.fee,
        via_coinbase: true,
    }));
    transfers
}

/// The SNARK work bought by the block at `height`: one job every third block.
pub fn snark_jobs(height: u32) -> Vec<SnarkJob> {
    if height <= 1 || !height.is_multiple_of(3) {
        return Vec::new();
    }
    let first = i32::try_from(height)
        .unwrap_or(i32::MAX / 2)
        .saturating_mul(2);
    vec![SnarkJob {
        prover: public_key(&format!("snark-worker-{}", height % 4)),
        fee: 5_000_000,
        work_ids: vec![first, first.saturating_add(1)],
    }]
}

fn pool_scope(host: &str) -> [u8; 4] {
    let field = base58::field_from(&format!("pool/{host}"));
    [field[0], field[1], field[2], field[3]]
}

/// Who sends the pending transactions of the node at `host`.
pub fn pool_sender(host: &str) -> String {
    public_key(&format!("sender-{host}"))
}

/// How many payments and zkApp commands wait in a node's pool.
pub const POOLED_PAYMENTS: u32 = 2;
pub const POOLED_ZKAPP_COMMANDS: u32 = 1;

/// The payments waiting in the pool of the node at `host`: two from one sender.
pub fn pooled_payments(host: &str) -> Vec<SignedCommand> {
    let from = pool_sender(host);
    (0..POOLED_PAYMENTS)
        .map(|i| {
            let (id, hash) = command_id(SIGNED_IN_POOL, pool_scope(host), i as u8);
            SignedCommand {
                id,
                hash,
                delegation: false,
                nonce: i,
                from: from.clone(),
                to: public_key(&format!("receiver-{i}")),
                amount: (u64::from(i) + 1) * 1_000_000_000,
                fee: 10_000_000,
                memo: base58::memo(""),
                valid_until: u32::MAX,
            }
        })
        .collect()
}

/// The zkApp command waiting in the pool of the node at `host`, from the
/// sender of its payments.
pub fn pooled_zkapp_commands(host: &str) -> Vec<ZkappCommand> {
    let target = public_key("zkapp-0");
    (0..POOLED_ZKAPP_COMMANDS)
        .map(|i| {
            let (id, hash) = command_id(ZKAPP_IN_POOL, pool_scope(host), i as u8);
            zkapp_command(
                id,
                hash,
                pool_sender(host),
                POOLED_PAYMENTS + i,
                &target,
                0,
                1,
            )
        })
        .collect()
}

/// The height of the block holding the transaction `id`, if it is one of this
/// chain's zkApp commands (`zkapp`) or signed commands.
pub fn block_of_command(id: &str, zkapp: bool) -> Option<u32> {
    let bytes = base64::engine::general_purpose::STANDARD.decode(id).ok()?;
    let (&tag, rest) = bytes.split_first()?;
    if tag
        != if zkapp {
            ZKAPP_IN_BLOCK
        } else {
            SIGNED_IN_BLOCK
        }
    {
        return None;
    }
    let height = u32::from_le_bytes(rest.get(..4)?.try_into().ok()?);
    let (signed, zkapps) = commands(height);
    let found = if zkapp {
        zkapps.iter().any(|c| c.id == id)
    } else {
        signed.iter().any(|c| c.id == id)
    };
    found.then_some(height)
}

/// Whether `id` is base64, as a serialized Mina transaction is.
pub fn is_transaction_id(id: &str) -> bool {
    !id.is_empty() && base64::engine::general_purpose::STANDARD.decode(id).is_ok()
}

/// Vesting of a timed account.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    pub initial_minimum_balance: u64,
    pub cliff_time: u32,
    pub cliff_amount: u64,
    pub vesting_period: u32,
    pub vesting_increment: u64,
}

impl Timing {
    /// The balance the account must keep at global slot `slot` (Mina's rule).
    pub fn minimum_balance_at(&self, slot: u32) -> u64 {
        if slot < self.cliff_time {
            return self.initial_minimum_balance;
        }
        let periods = u64::from((slot - self.cliff_time) / self.vesting_period.max(1));
        let vested = self
            .cliff_amount
            .saturating_add(periods.saturating_mul(self.vesting_increment));
        self.initial_minimum_balance.saturating_sub(vested)
    }
}

/// What the ledger holds for a key and token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerAccount {
    pub balance: u64,
    pub nonce: u32,
    pub timing: Option<Timing>,
    pub receipt_chain_hash: String,
    /// Set for the zkApps the simulated commands update.
    pub zkapp: Option<Zkapp>,
}

/// A zkApp account's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Zkapp {
    pub app_state: Vec<String>,
    pub verification_key: String,
    pub verification_key_hash: String,
    pub action_state: Vec<String>,
    pub zkapp_uri: String,
}

/// The `index`-th state field of the zkApp at `key` (decimal).
pub fn app_state(key: &str, index: usize) -> String {
    field_decimal(&format!("app-state/{key}/{index}"))
}

/// The ledger's account of `key`: every key has one, with a balance derived
/// from it; one key in eight is timed (vesting).
pub fn ledger_account_of(key: &str) -> LedgerAccount {
    let balance =
        1_000_000_000_000_u64 + u64::from(key.bytes().map(u32::from).sum::<u32>()) * 1_000_000;
    let digest = base58::field_from(&format!("timing/{key}"));
    let timing = digest[0].is_multiple_of(8).then(|| Timing {
        initial_minimum_balance: balance / 2,
        cliff_time: u32::from(digest[1]) * 1000,
        cliff_amount: balance / 10,
        vesting_period: 1,
        vesting_increment: 1_000_000,
    });
    let zkapp = zkapps().iter().any(|z| z == key).then(|| Zkapp {
        app_state: (0..8).map(|i| app_state(key, i)).collect(),
        verification_key: base64::engine::general_purpose::STANDARD
            .encode(base58::field_from(&format!("verification-key/{key}"))),
        verification_key_hash: field_decimal(&format!("verification-key-hash/{key}")),
        action_state: (0..5)
            .map(|i| field_decimal(&format!("action-state/{key}/{i}")))
            .collect(),
        zkapp_uri: String::new(),
    });
    LedgerAccount {
        balance,
        nonce: 0,
        timing,
        receipt_chain_hash: base58::field(
            Kind::ReceiptChainHash,
            &base58::field_from(&format!("receipt-chain/{key}")),
        ),
        zkapp,
    }
}

/// Whether `token` is a token id (`w…`, a field in base58check).
pub fn is_token_id(token: &str) -> bool {
    base58::decode_raw(Kind::TokenId, token).is_some()
}

/// Whether `key` has the form of a Mina public key.
pub fn is_public_key(key: &str) -> bool {
    key.starts_with("B62") && key.len() == 55
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_hashes_link_heights_and_find_them_back() {
        for height in [1, 2, 1000, 3571, u32::MAX] {
            let hash = state_hash(height);
            assert!(hash.starts_with("3N"), "{hash}");
            assert_eq!(height_of(&hash), Some(height));
        }
        assert_ne!(state_hash(1), state_hash(2));
        assert_eq!(height_of(&zero_state_hash()), None);
        assert_eq!(height_of(GENESIS_LEDGER_HASH), None);
        assert_eq!(height_of("3NKnot a hash"), None);
    }

    #[test]
    fn the_default_token_is_a_token_id() {
        assert!(is_token_id(DEFAULT_TOKEN));
        assert!(!is_token_id(GENESIS_LEDGER_HASH));
    }

    #[test]
    fn the_frontier_is_the_newest_k_blocks() {
        assert!(frontier(0).is_empty());
        assert_eq!(frontier(10), 1..=10);
        assert_eq!(frontier(1000), 711..=1000);
    }

    #[test]
    fn epoch_data_moves_from_next_to_staking_at_an_epoch_boundary() {
        let last_of_first = BLOCKS_PER_EPOCH;
        assert_eq!(epoch_of(last_of_first), 0);
        assert_eq!(epoch_of(last_of_first + 1), 1);
        assert_eq!(
            staking_epoch_data(last_of_first + 1),
            next_epoch_data(last_of_first)
        );
        assert_eq!(
            staking_epoch_data(last_of_first + 1),
            staking_epoch_data(2 * last_of_first)
        );
        let genesis = staking_epoch_data(1);
        assert_eq!(genesis.ledger_hash, GENESIS_LEDGER_HASH);
        assert_eq!(genesis.start_checkpoint, zero_state_hash());
        // The seed stops changing at the lock checkpoint.
        let lock = lock_height_of_epoch(1);
        assert_ne!(next_epoch_data(lock - 1).seed, next_epoch_data(lock).seed);
        assert_eq!(next_epoch_data(lock).seed, next_epoch_data(lock + 5).seed);
        assert_eq!(next_epoch_data(lock + 5).lock_checkpoint, state_hash(lock));
        let next = next_epoch_data(last_of_first + 10);
        assert_eq!(next.start_checkpoint, state_hash(last_of_first));
        assert_eq!(next.epoch_length, 10);
    }

    #[test]
    fn every_block_transaction_is_found_by_its_id_and_pool_ones_are_not() {
        for height in 2..40 {
            let (signed, zkapp) = commands(height);
            assert_eq!(signed.len() + zkapp.len(), (height % 5) as usize);
            for c in &signed {
                assert_eq!(block_of_command(&c.id, false), Some(height), "{}", c.id);
                assert_eq!(block_of_command(&c.id, true), None);
                assert!(is_transaction_id(&c.id));
            }
            for c in &zkapp {
                assert_eq!(block_of_command(&c.id, true), Some(height), "{}", c.id);
                assert_eq!(block_of_command(&c.id, false), None);
            }
        }
        for c in pooled_payments("127.0.0.2") {
            assert_eq!(block_of_command(&c.id, false), None);
            assert!(c.hash.starts_with("5J"));
        }
        assert_eq!(block_of_command("not base64!", false), None);
        assert!(!is_transaction_id("not base64!"));
    }

    #[test]
    fn a_pool_holds_what_its_counts_say() {
        let host = "127.0.0.9";
        assert_eq!(pooled_payments(host).len(), POOLED_PAYMENTS as usize);
        assert_eq!(
            pooled_zkapp_commands(host).len(),
            POOLED_ZKAPP_COMMANDS as usize
        );
    }

    #[test]
    fn fees_of_a_block_go_to_its_creator_and_provers() {
        let height = 9; // 4 commands, a SNARK job
        let transfers = fee_transfers(height);
        assert_eq!(transfers[0].recipient, creator(height));
        assert_eq!(transfers[1].recipient, snark_jobs(height)[0].prover);
        assert!(transfers[1].via_coinbase);
    }

    #[test]
    fn a_timed_account_unlocks_as_it_vests() {
        let timing = Timing {
            initial_minimum_balance: 100,
            cliff_time: 10,
            cliff_amount: 40,
            vesting_period: 2,
            vesting_increment: 10,
        };
        assert_eq!(timing.minimum_balance_at(9), 100);
        assert_eq!(timing.minimum_balance_at(10), 60);
        assert_eq!(timing.minimum_balance_at(13), 50);
        assert_eq!(timing.minimum_balance_at(1000), 0);
    }
}

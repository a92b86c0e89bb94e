//! Blocks of the simulated chain, resolved from their height: the same block
//! whether it comes from `bestChain`, `block`, `genesisBlock` or `newBlock`.

use async_graphql::{Object, SimpleObject};

use super::account::Account;
use super::commands::{UserCommand, ZkappCommandResult};
use super::scalars::{
    Amount, BlockTime, BodyReference, Epoch, EpochSeed, Fee, FeeTransferType, FieldElem,
    Globalslot, LedgerHash, Length, PendingCoinbaseAuxHash, PendingCoinbaseHash, PublicKey,
    SignEnum, Slot, StagedLedgerAuxHash, StateHash, StateHashAsDecimal, TokenId, UInt32,
};
use crate::simulator::chain::{self, EpochData};

/// The block at a height.
#[derive(Debug, Clone, Copy)]
pub struct Block(pub u32);

/// The block at `height` (what the `newBlock` subscription pushes).
pub fn block(height: u32) -> Block {
    Block(height)
}

#[Object(name = "Block")]
impl Block {
    async fn creator(&self) -> PublicKey {
        PublicKey(chain::creator(self.0))
    }

    async fn creator_account(&self) -> Account {
        Account::of(&chain::creator(self.0))
    }

    async fn winner_account(&self) -> Account {
        Account::of(&chain::creator(self.0))
    }

    async fn state_hash(&self) -> StateHash {
        StateHash(chain::state_hash(self.0))
    }

    async fn state_hash_field(&self) -> StateHashAsDecimal {
        StateHashAsDecimal(chain::state_hash_decimal(self.0))
    }

    async fn protocol_state(&self) -> ProtocolState {
        ProtocolState(self.0)
    }

    async fn transactions(&self) -> Transactions {
        Transactions(self.0)
    }

    async fn command_transaction_count(&self) -> i32 {
        let (signed, zkapp) = chain::commands(self.0);
        i32::try_from(signed.len() + zkapp.len()).unwrap_or(i32::MAX)
    }

    async fn snark_jobs(&self) -> Vec<CompletedWork> {
        chain::snark_jobs(self.0)
            .into_iter()
            .map(CompletedWork::from)
            .collect()
    }
}

/// SNARK work: who proved it, for what fee.
#[derive(SimpleObject)]
#[graphql(name = "CompletedWork")]
pub struct CompletedWork {
    prover: PublicKey,
    fee: Fee,
    work_ids: Vec<i32>,
}

impl From<chain::SnarkJob> for CompletedWork {
    fn from(job: chain::SnarkJob) -> Self {
        Self {
            prover: PublicKey(job.prover),
            fee: Fee::of(job.fee),
            work_ids: job.work_ids,
        }
    }
}

pub struct ProtocolState(u32);

#[Object(name = "ProtocolState")]
impl ProtocolState {
    async fn previous_state_hash(&self) -> StateHash {
        StateHash(chain::state_hash(self.0.saturating_sub(1)))
    }

    async fn blockchain_state(&self) -> BlockchainState {
        BlockchainState(self.0)
    }

    async fn consensus_state(&self) -> ConsensusState {
        ConsensusState(self.0)
    }
}

pub struct BlockchainState(u32);

#[Object(name = "BlockchainState")]
impl BlockchainState {
    async fn date(&self) -> BlockTime {
        BlockTime::of(chain::slot_millis(chain::slot_of(self.0)))
    }

    async fn utc_date(&self) -> BlockTime {
        BlockTime::of(chain::slot_millis(chain::slot_of(self.0)))
    }

    async fn snarked_ledger_hash(&self) -> LedgerHash {
        LedgerHash(chain::snarked_ledger_hash(self.0))
    }

    async fn staged_ledger_hash(&self) -> LedgerHash {
        LedgerHash(chain::staged_ledger_hash(self.0))
    }

    async fn staged_ledger_aux_hash(&self) -> StagedLedgerAuxHash {
        let [aux, _, _] = chain::staged_ledger_extras(self.0);
        StagedLedgerAuxHash(aux)
    }

    async fn staged_ledger_pending_coinbase_aux(&self) -> PendingCoinbaseAuxHash {
        let [_, aux, _] = chain::staged_ledger_extras(self.0);
        PendingCoinbaseAuxHash(aux)
    }

    async fn staged_ledger_pending_coinbase_hash(&self) -> PendingCoinbaseHash {
        let [_, _, hash] = chain::staged_ledger_extras(self.0);
        PendingCoinbaseHash(hash)
    }

    async fn staged_ledger_proof_emitted(&self) -> Option<bool> {
        Some(chain::proof_emitted(self.0))
    }

    /// What the newest ledger proof proves: from the snarked ledger before it
    /// to the one after.
    async fn ledger_proof_statement(&self) -> SnarkedLedgerState {
        SnarkedLedgerState::of(self.0)
    }

    async fn body_reference(&self) -> BodyReference {
        BodyReference(chain::body_reference(self.0))
    }
}

#[derive(SimpleObject)]
#[graphql(name = "SnarkedLedgerState")]
pub struct SnarkedLedgerState {
    source_registers: Registers,
    target_registers: Registers,
    connecting_ledger_left: LedgerHash,
    connecting_ledger_right: LedgerHash,
    supply_increase: SignedAmount,
    fee_excess: FeeExcess,
    sok_digest: Option<String>,
}

impl SnarkedLedgerState {
    fn of(height: u32) -> Self {
        let target = chain::snarked_ledger_hash(height);
        let proved = height - height % 5;
        let source = chain::snarked_ledger_hash(proved.saturating_sub(1));
        let zero = || SignedAmount {
            sign: SignEnum::Plus,
            amount_magnitude: Amount::of(0),
        };
        let registers = |ledger: &str| Registers {
            first_pass_ledger: LedgerHash(ledger.to_owned()),
            second_pass_ledger: LedgerHash(ledger.to_owned()),
            pending_coinbase_stack: PendingCoinbaseStack {
                data_stack: FieldElem(chain::field_decimal(&format!("data-stack/{ledger}"))),
                state_stack: StateStack {
                    initial: FieldElem(chain::field_decimal(&format!("state-stack/{ledger}"))),
                    current: FieldElem(chain::field_decimal(&format!("state-stack/{ledger}"))),
                },
            },
            local_state: LocalState {
                stack_frame: FieldElem("0".to_owned()),
                call_stack: FieldElem("0".to_owned()),
                transaction_commitment: FieldElem("0".to_owned()),
                full_transaction_commitment: FieldElem("0".to_owned()),
                excess: zero(),
                supply_increase: zero(),
                ledger: LedgerHash(chain::GENESIS_LEDGER_HASH.to_owned()),
                success: true,
                account_update_index: UInt32::of(0),
                failure_status_table: Vec::new(),
                will_succeed: true,
            },
        };
        let fee = || SignedFee {
            sign: SignEnum::Plus,
            fee_magnitude: Fee::of(0),
        };
        Self {
            source_registers: registers(&source),
            target_registers: registers(&target),
            connecting_ledger_left: LedgerHash(source.clone()),
            connecting_ledger_right: LedgerHash(target.clone()),
            supply_increase: SignedAmount {
                sign: SignEnum::Plus,
                amount_magnitude: Amount::of(if proved == 0 { 0 } else { chain::COINBASE }),
            },
            fee_excess: FeeExcess {
                fee_token_left: TokenId(chain::DEFAULT_TOKEN.to_owned()),
                fee_excess_left: fee(),
                fee_token_right: TokenId(chain::DEFAULT_TOKEN.to_owned()),
                fee_excess_right: fee(),
            },
            sok_digest: None,
        }
    }
}

#[derive(SimpleObject)]
#[graphql(name = "Registers")]
pub struct Registers {
    first_pass_ledger: LedgerHash,
    second_pass_ledger: LedgerHash,
    pending_coinbase_stack: PendingCoinbaseStack,
    local_state: LocalState,
}

#[derive(SimpleObject)]
#[graphql(name = "PendingCoinbaseStack")]
pub struct PendingCoinbaseStack {
    data_stack: FieldElem,
    state_stack: StateStack,
}

#[derive(SimpleObject)]
#[graphql(name = "StateStack")]
pub struct StateStack {
    initial: FieldElem,
    current: FieldElem,
}

#[derive(SimpleObject)]
#[graphql(name = "LocalState")]
pub struct LocalState {
    stack_frame: FieldElem,
    call_stack: FieldElem,
    transaction_commitment: FieldElem,
    full_transaction_commitment: FieldElem,
    excess: SignedAmount,
    supply_increase: SignedAmount,
    ledger: LedgerHash,
    success: bool,
    account_update_index: UInt32,
    failure_status_table: Vec<Vec<Option<String>>>,
    will_succeed: bool,
}

#[derive(SimpleObject)]
#[graphql(name = "SignedAmount")]
pub struct SignedAmount {
    sign: SignEnum,
    amount_magnitude: Amount,
}

#[derive(SimpleObject)]
#[graphql(name = "SignedFee")]
pub struct SignedFee {
    sign: SignEnum,
    fee_magnitude: Fee,
}

#[derive(SimpleObject)]
#[graphql(name = "FeeExcess")]
pub struct FeeExcess {
    fee_token_left: TokenId,
    fee_excess_left: SignedFee,
    fee_token_right: TokenId,
    fee_excess_right: SignedFee,
}

pub struct ConsensusState(u32);

#[Object(name = "ConsensusState")]
impl ConsensusState {
    async fn blockchain_length(&self) -> Length {
        Length::of(self.0)
    }

    async fn block_height(&self) -> Length {
        Length::of(self.0)
    }

    /// Epochs the chain has gone through (it skips none).
    async fn epoch_count(&self) -> Length {
        Length::of(chain::epoch_of(self.0))
    }

    async fn min_window_density(&self) -> Length {
        Length::of(chain::min_window_density(self.0))
    }

    async fn last_vrf_output(&self) -> String {
        chain::vrf_output(self.0)
    }

    async fn total_currency(&self) -> Amount {
        Amount::of(chain::total_currency(self.0))
    }

    async fn staking_epoch_data(&self) -> StakingEpochData {
        StakingEpochData::from(chain::staking_epoch_data(self.0))
    }

    async fn next_epoch_data(&self) -> NextEpochData {
        NextEpochData::from(chain::next_epoch_data(self.0))
    }

    async fn has_ancestor_in_same_checkpoint_window(&self) -> bool {
        self.0 > 1
    }

    async fn slot(&self) -> Slot {
        Slot::of(chain::slot_of(self.0) % chain::SLOTS_PER_EPOCH)
    }

    async fn slot_since_genesis(&self) -> Globalslot {
        Globalslot::of(chain::slot_of(self.0))
    }

    async fn epoch(&self) -> Epoch {
        Epoch::of(chain::epoch_of(self.0))
    }

    async fn supercharged_coinbase(&self) -> bool {
        false
    }

    async fn block_stake_winner(&self) -> PublicKey {
        PublicKey(chain::creator(self.0))
    }

    async fn block_creator(&self) -> PublicKey {
        PublicKey(chain::creator(self.0))
    }

    /// Mina's spelling.
    async fn coinbase_receiever(&self) -> PublicKey {
        PublicKey(chain::creator(self.0))
    }
}

#[derive(SimpleObject)]
#[graphql(name = "epochLedger")]
pub struct EpochLedger {
    hash: LedgerHash,
    total_currency: Amount,
}

macro_rules! epoch_data {
    ($ty:ident, $name:literal) => {
        #[derive(SimpleObject)]
        #[graphql(name = $name)]
        pub struct $ty {
            ledger: EpochLedger,
            seed: EpochSeed,
            start_checkpoint: StateHash,
            lock_checkpoint: String,
            epoch_length: Length,
        }

        impl From<EpochData> for $ty {
            fn from(data: EpochData) -> Self {
                Self {
                    ledger: EpochLedger {
                        hash: LedgerHash(data.ledger_hash),
                        total_currency: Amount::of(data.total_currency),
                    },
                    seed: EpochSeed(data.seed),
                    start_checkpoint: StateHash(data.start_checkpoint),
                    lock_checkpoint: data.lock_checkpoint,
                    epoch_length: Length::of(data.epoch_length),
                }
            }
        }
    };
}

epoch_data!(StakingEpochData, "StakingEpochData");
epoch_data!(NextEpochData, "NextEpochData");

/// The transactions of the block at a height.
pub struct Transactions(u32);

#[Object(name = "Transactions")]
impl Transactions {
    async fn user_commands(&self) -> Vec<UserCommand> {
        chain::commands(self.0)
            .0
            .into_iter()
            .map(UserCommand::of)
            .collect()
    }

    async fn zkapp_commands(&self) -> Vec<ZkappCommandResult> {
        chain::commands(self.0)
            .1
            .into_iter()
            .map(ZkappCommandResult)
            .collect()
    }

    async fn fee_transfer(&self) -> Vec<FeeTransfer> {
        chain::fee_transfers(self.0)
            .into_iter()
            .map(|t| FeeTransfer {
                recipient: PublicKey(t.recipient),
                fee: Fee::of(t.fee),
                kind: FeeTransferType::of(if t.via_coinbase {
                    "Fee_transfer_via_coinbase"
                } else {
                    "Fee_transfer"
                }),
            })
            .collect()
    }

    async fn coinbase(&self) -> Amount {
        Amount::of(if self.0 <= 1 { 0 } else { chain::COINBASE })
    }

    async fn coinbase_receiver_account(&self) -> Option<Account> {
        (self.0 > 1).then(|| Account::of(&chain::creator(self.0)))
    }
}

#[derive(SimpleObject)]
#[graphql(name = "FeeTransfer")]
pub struct FeeTransfer {
    recipient: PublicKey,
    fee: Fee,
    #[graphql(name = "type")]
    kind: FeeTransferType,
}

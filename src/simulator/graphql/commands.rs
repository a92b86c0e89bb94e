//! Transactions: signed commands (payments and stake delegations) and zkApp
//! commands, in blocks and in the pool.

use async_graphql::{Interface, Object, SimpleObject};

use super::account::Account;
use super::scalars::{
    Amount, Balance, CurrencyAmount, Fee, Field, GlobalSlotSinceGenesis, Globalslot, Index, Memo,
    PublicKey, Sign, Signature, StateHash, TokenId, TransactionHash, TransactionId,
    TransactionStatusFailure, UInt32, UserCommandKind,
};
use crate::simulator::chain::{self, SignedCommand};

/// A payment.
pub struct UserCommandPayment(SignedCommand);

/// A stake delegation: `from` delegates to `to`.
pub struct UserCommandDelegation(SignedCommand);

/// The fields of Mina's `UserCommand` interface, for each of its types.
macro_rules! user_command_object {
    ($ty:ident, $name:literal, { $($extra:tt)* }) => {
        #[Object(name = $name)]
        impl $ty {
            $($extra)*

            async fn id(&self) -> TransactionId {
                TransactionId(self.0.id.clone())
            }
            async fn hash(&self) -> TransactionHash {
                TransactionHash(self.0.hash.clone())
            }
            async fn kind(&self) -> UserCommandKind {
                UserCommandKind::of(if self.0.delegation { "STAKE_DELEGATION" } else { "PAYMENT" })
            }
            async fn nonce(&self) -> i32 {
                i32::try_from(self.0.nonce).unwrap_or(i32::MAX)
            }
            async fn source(&self) -> Account {
                Account::of(&self.0.from)
            }
            async fn receiver(&self) -> Account {
                Account::of(&self.0.to)
            }
            async fn fee_payer(&self) -> Account {
                Account::of(&self.0.from)
            }
            async fn valid_until(&self) -> Globalslot {
                Globalslot::of(self.0.valid_until)
            }
            async fn token(&self) -> TokenId {
                TokenId(chain::DEFAULT_TOKEN.to_owned())
            }
            async fn amount(&self) -> Amount {
                Amount::of(self.0.amount)
            }
            async fn fee_token(&self) -> TokenId {
                TokenId(chain::DEFAULT_TOKEN.to_owned())
            }
            async fn fee(&self) -> Fee {
                Fee::of(self.0.fee)
            }
            async fn memo(&self) -> String {
                self.0.memo.clone()
            }
            async fn is_delegation(&self) -> bool {
                self.0.delegation
            }
            async fn from(&self) -> PublicKey {
                PublicKey(self.0.from.clone())
            }
            // Mina's name: a field, not a conversion.
            #[allow(clippy::wrong_self_convention)]
            async fn from_account(&self) -> Account {
                Account::of(&self.0.from)
            }
            async fn to(&self) -> PublicKey {
                PublicKey(self.0.to.clone())
            }
            async fn to_account(&self) -> Account {
                Account::of(&self.0.to)
            }
            /// The simulated commands all apply.
            async fn failure_reason(&self) -> Option<TransactionStatusFailure> {
                None
            }
        }
    };
}

user_command_object!(UserCommandPayment, "UserCommandPayment", {});
user_command_object!(UserCommandDelegation, "UserCommandDelegation", {
    async fn delegator(&self) -> Account {
        Account::of(&self.0.from)
    }
    async fn delegatee(&self) -> Account {
        Account::of(&self.0.to)
    }
});

/// Mina's signed commands: payments and stake delegations.
// Fields of one type read as one attribute repeated to clippy.
#[allow(clippy::duplicated_attributes)]
#[derive(Interface)]
#[graphql(
    name = "UserCommand",
    field(name = "id", ty = "TransactionId"),
    field(name = "hash", ty = "TransactionHash"),
    field(name = "kind", ty = "UserCommandKind"),
    field(name = "nonce", ty = "i32"),
    field(name = "source", ty = "Account"),
    field(name = "receiver", ty = "Account"),
    field(name = "fee_payer", ty = "Account"),
    field(name = "valid_until", ty = "Globalslot"),
    field(name = "token", ty = "TokenId"),
    field(name = "amount", ty = "Amount"),
    field(name = "fee_token", ty = "TokenId"),
    field(name = "fee", ty = "Fee"),
    field(name = "memo", ty = "String"),
    field(name = "is_delegation", ty = "bool"),
    field(name = "from", ty = "PublicKey"),
    field(name = "from_account", ty = "Account"),
    field(name = "to", ty = "PublicKey"),
    field(name = "to_account", ty = "Account"),
    field(name = "failure_reason", ty = "Option<TransactionStatusFailure>")
)]
pub enum UserCommand {
    Payment(UserCommandPayment),
    Delegation(UserCommandDelegation),
}

impl UserCommand {
    // Not `From`: the interface's field `from` shadows `UserCommand::from`.
    pub fn of(command: SignedCommand) -> Self {
        if command.delegation {
            Self::Delegation(UserCommandDelegation(command))
        } else {
            Self::Payment(UserCommandPayment(command))
        }
    }
}

/// A zkApp command and, once applied, why it failed if it did.
pub struct ZkappCommandResult(pub chain::ZkappCommand);

#[Object(name = "ZkappCommandResult")]
impl ZkappCommandResult {
    async fn id(&self) -> TransactionId {
        TransactionId(self.0.id.clone())
    }

    async fn hash(&self) -> TransactionHash {
        TransactionHash(self.0.hash.clone())
    }

    async fn zkapp_command(&self) -> ZkappCommand {
        ZkappCommand::from(&self.0)
    }

    /// Null when the command applied.
    async fn failure_reason(&self) -> Option<Vec<Option<ZkappCommandFailureReason>>> {
        self.0.failure.as_ref().map(|f| {
            vec![Some(ZkappCommandFailureReason {
                index: Some(Index::of(f.index)),
                failures: f
                    .failures
                    .iter()
                    .cloned()
                    .map(TransactionStatusFailure)
                    .collect(),
            })]
        })
    }
}

#[derive(SimpleObject)]
#[graphql(name = "ZkappCommandFailureReason")]
pub struct ZkappCommandFailureReason {
    index: Option<Index>,
    failures: Vec<TransactionStatusFailure>,
}

#[derive(SimpleObject)]
#[graphql(name = "ZkappCommand")]
pub struct ZkappCommand {
    fee_payer: ZkappFeePayer,
    account_updates: Vec<ZkappAccountUpdate>,
    memo: Memo,
}

impl From<&chain::ZkappCommand> for ZkappCommand {
    fn from(command: &chain::ZkappCommand) -> Self {
        Self {
            fee_payer: ZkappFeePayer {
                body: FeePayerBody {
                    public_key: PublicKey(command.fee_payer.clone()),
                    fee: Fee::of(command.fee),
                    valid_until: None,
                    nonce: UInt32::of(command.nonce),
                },
                authorization: Signature(command.signature.clone()),
            },
            account_updates: command
                .updates
                .iter()
                .map(|u| ZkappAccountUpdate {
                    body: AccountUpdateBody {
                        public_key: PublicKey(u.public_key.clone()),
                        token_id: TokenId(chain::DEFAULT_TOKEN.to_owned()),
                        balance_change: BalanceChange {
                            magnitude: CurrencyAmount::of(u.balance_change.unsigned_abs()),
                            sgn: Sign::of(if u.balance_change < 0 {
                                "Negative"
                            } else {
                                "Positive"
                            }),
                        },
                        update: AccountUpdateModification::unchanged(),
                        preconditions: Preconditions::of(command.height, u),
                        increment_nonce: u.increment_nonce,
                        events: strings(&u.events),
                        actions: strings(&u.actions),
                        call_data: Field(u.call_data.clone()),
                        call_depth: u.call_depth,
                        use_full_commitment: true,
                        implicit_account_creation_fee: false,
                        may_use_token: MayUseToken {
                            parents_own_token: false,
                            inherit_from_parent: false,
                        },
                        authorization_kind: AuthorizationKindStructured {
                            is_signed: true,
                            is_proved: false,
                            verification_key_hash: Field(chain::field_decimal("dummy-vk-hash")),
                        },
                    },
                    authorization: Control {
                        proof: None,
                        signature: Some(Signature(u.signature.clone())),
                    },
                })
                .collect(),
            memo: Memo(command.memo.clone()),
        }
    }
}

fn strings(lists: &[Vec<String>]) -> Vec<Vec<Option<String>>> {
    lists
        .iter()
        .map(|l| l.iter().cloned().map(Some).collect())
        .collect()
}

#[derive(SimpleObject)]
#[graphql(name = "ZkappFeePayer")]
pub struct ZkappFeePayer {
    body: FeePayerBody,
    authorization: Signature,
}

#[derive(SimpleObject)]
#[graphql(name = "FeePayerBody")]
pub struct FeePayerBody {
    public_key: PublicKey,
    fee: Fee,
    valid_until: Option<GlobalSlotSinceGenesis>,
    nonce: UInt32,
}

#[derive(SimpleObject)]
#[graphql(name = "ZkappAccountUpdate")]
pub struct ZkappAccountUpdate {
    body: AccountUpdateBody,
    authorization: Control,
}

#[derive(SimpleObject)]
#[graphql(name = "AccountUpdateBody")]
pub struct AccountUpdateBody {
    public_key: PublicKey,
    token_id: TokenId,
    update: AccountUpdateModification,
    balance_change: BalanceChange,
    increment_nonce: bool,
    events: Vec<Vec<Option<String>>>,
    actions: Vec<Vec<Option<String>>>,
    call_data: Field,
    call_depth: i32,
    use_full_commitment: bool,
    implicit_account_creation_fee: bool,
    preconditions: Preconditions,
    may_use_token: MayUseToken,
    authorization_kind: AuthorizationKindStructured,
}

/// What an account update changes: the simulated zkApps emit actions and
/// change nothing else. Without `verificationKey`, `permissions` and `timing`,
/// which no simulated update sets.
#[derive(SimpleObject)]
#[graphql(name = "AccountUpdateModification")]
pub struct AccountUpdateModification {
    app_state: Vec<Option<Field>>,
    delegate: Option<PublicKey>,
    zkapp_uri: Option<String>,
    token_symbol: Option<String>,
    voting_for: Option<StateHash>,
}

impl AccountUpdateModification {
    fn unchanged() -> Self {
        Self {
            app_state: vec![None; 8],
            delegate: None,
            zkapp_uri: None,
            token_symbol: None,
            voting_for: None,
        }
    }
}

/// What must hold for an account update to apply: a window of lengths and
/// slots around the block, the staking ledger's currency, and the zkApp's
/// nonce, balance and first state field.
#[derive(SimpleObject)]
#[graphql(name = "Preconditions")]
pub struct Preconditions {
    network: NetworkPrecondition,
    account: AccountPrecondition,
    valid_while: Option<GlobalSlotSinceGenesisInterval>,
}

/// How far around the block the windows of the preconditions reach.
const WINDOW: u32 = 10;

impl Preconditions {
    fn of(height: u32, update: &chain::AccountUpdate) -> Self {
        let slot = chain::slot_of(height);
        let slots = GlobalSlotSinceGenesisInterval {
            lower: GlobalSlotSinceGenesis::of(slot.saturating_sub(2 * WINDOW)),
            upper: GlobalSlotSinceGenesis::of(slot.saturating_add(2 * WINDOW)),
        };
        let staking = chain::staking_epoch_data(height);
        let unconstrained_epoch = || EpochDataPrecondition {
            ledger: EpochLedgerPrecondition {
                hash: None,
                total_currency: None,
            },
            seed: None,
            start_checkpoint: None,
            lock_checkpoint: None,
            epoch_length: None,
        };
        let ledger = chain::ledger_account_of(&update.public_key);
        let mut state = vec![None; 8];
        state[0] = Some(Field(update.state_precondition.clone()));
        Self {
            network: NetworkPrecondition {
                snarked_ledger_hash: None,
                blockchain_length: Some(LengthInterval {
                    lower: UInt32::of(height.saturating_sub(WINDOW)),
                    upper: UInt32::of(height.saturating_add(WINDOW)),
                }),
                min_window_density: None,
                total_currency: None,
                global_slot_since_genesis: None,
                staking_epoch_data: EpochDataPrecondition {
                    ledger: EpochLedgerPrecondition {
                        hash: None,
                        total_currency: Some(CurrencyAmountInterval {
                            lower: CurrencyAmount::of(staking.total_currency),
                            upper: CurrencyAmount::of(staking.total_currency),
                        }),
                    },
                    ..unconstrained_epoch()
                },
                next_epoch_data: unconstrained_epoch(),
            },
            account: AccountPrecondition {
                balance: Some(BalanceInterval {
                    lower: Balance::of(0),
                    upper: Balance::of(ledger.balance),
                }),
                nonce: Some(NonceInterval {
                    lower: UInt32::of(ledger.nonce),
                    upper: UInt32::of(ledger.nonce),
                }),
                receipt_chain_hash: None,
                delegate: None,
                state,
                action_state: None,
                proved_state: Some(true),
                is_new: Some(false),
            },
            valid_while: Some(slots),
        }
    }
}

#[derive(SimpleObject)]
#[graphql(name = "NetworkPrecondition")]
pub struct NetworkPrecondition {
    snarked_ledger_hash: Option<Field>,
    blockchain_length: Option<LengthInterval>,
    min_window_density: Option<LengthInterval>,
    total_currency: Option<CurrencyAmountInterval>,
    global_slot_since_genesis: Option<GlobalSlotSinceGenesisInterval>,
    staking_epoch_data: EpochDataPrecondition,
    next_epoch_data: EpochDataPrecondition,
}

#[derive(SimpleObject)]
#[graphql(name = "EpochDataPrecondition")]
pub struct EpochDataPrecondition {
    ledger: EpochLedgerPrecondition,
    seed: Option<Field>,
    start_checkpoint: Option<Field>,
    lock_checkpoint: Option<Field>,
    epoch_length: Option<LengthInterval>,
}

#[derive(SimpleObject)]
#[graphql(name = "EpochLedgerPrecondition")]
pub struct EpochLedgerPrecondition {
    hash: Option<Field>,
    total_currency: Option<CurrencyAmountInterval>,
}

#[derive(SimpleObject)]
#[graphql(name = "AccountPrecondition")]
pub struct AccountPrecondition {
    balance: Option<BalanceInterval>,
    nonce: Option<NonceInterval>,
    receipt_chain_hash: Option<Field>,
    delegate: Option<PublicKey>,
    state: Vec<Option<Field>>,
    action_state: Option<Field>,
    proved_state: Option<bool>,
    is_new: Option<bool>,
}

#[derive(SimpleObject)]
#[graphql(name = "LengthInterval")]
pub struct LengthInterval {
    lower: UInt32,
    upper: UInt32,
}

#[derive(SimpleObject)]
#[graphql(name = "CurrencyAmountInterval")]
pub struct CurrencyAmountInterval {
    lower: CurrencyAmount,
    upper: CurrencyAmount,
}

#[derive(SimpleObject)]
#[graphql(name = "GlobalSlotSinceGenesisInterval")]
pub struct GlobalSlotSinceGenesisInterval {
    lower: GlobalSlotSinceGenesis,
    upper: GlobalSlotSinceGenesis,
}

#[derive(SimpleObject)]
#[graphql(name = "BalanceInterval")]
pub struct BalanceInterval {
    lower: Balance,
    upper: Balance,
}

#[derive(SimpleObject)]
#[graphql(name = "NonceInterval")]
pub struct NonceInterval {
    lower: UInt32,
    upper: UInt32,
}

#[derive(SimpleObject)]
#[graphql(name = "BalanceChange")]
pub struct BalanceChange {
    magnitude: CurrencyAmount,
    sgn: Sign,
}

#[derive(SimpleObject)]
#[graphql(name = "MayUseToken")]
pub struct MayUseToken {
    parents_own_token: bool,
    inherit_from_parent: bool,
}

#[derive(SimpleObject)]
#[graphql(name = "AuthorizationKindStructured")]
pub struct AuthorizationKindStructured {
    is_signed: bool,
    is_proved: bool,
    verification_key_hash: Field,
}

#[derive(SimpleObject)]
#[graphql(name = "Control")]
pub struct Control {
    proof: Option<super::scalars::ZkappProof>,
    signature: Option<Signature>,
}

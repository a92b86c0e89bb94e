//! Mina's scalars and enums. Its numbers, hashes and keys travel as JSON strings.

use async_graphql::Enum;

macro_rules! string_scalar {
    ($($name:ident),* $(,)?) => {$(
        #[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub String);
        async_graphql::scalar!($name);

        // Not every scalar is built from a number.
        #[allow(dead_code)]
        impl $name {
            /// The scalar of a value's text (`Length::of(12)` is `"12"`).
            pub fn of(value: impl std::fmt::Display) -> Self {
                Self(value.to_string())
            }
        }
    )*};
}

string_scalar!(
    AccountNonce,
    Action,
    Amount,
    Balance,
    BlockTime,
    BodyReference,
    ChainHash,
    CurrencyAmount,
    Epoch,
    EpochSeed,
    Fee,
    FeeTransferType,
    Field,
    FieldElem,
    GlobalSlotSinceGenesis,
    GlobalSlotSinceHardFork,
    GlobalSlotSpan,
    Globalslot,
    Index,
    InetAddr,
    LedgerHash,
    Length,
    Memo,
    PendingCoinbaseAuxHash,
    PendingCoinbaseHash,
    PublicKey,
    Sign,
    Signature,
    Slot,
    StagedLedgerAuxHash,
    StateHash,
    StateHashAsDecimal,
    Time,
    TokenId,
    TransactionHash,
    TransactionId,
    TransactionStatusFailure,
    UInt32,
    UserCommandKind,
    VerificationKey,
    VerificationKeyHash,
    ZkappProof,
);

/// Mina's `sign` (of signed amounts and fees).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[graphql(name = "sign")]
pub enum SignEnum {
    Plus,
    Minus,
}

/// Who may change a part of an account.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[graphql(name = "AccountAuthRequired")]
pub enum AccountAuthRequired {
    #[graphql(name = "None")]
    NoAuthorization,
    #[graphql(name = "Either")]
    Either,
    #[graphql(name = "Proof")]
    Proof,
    #[graphql(name = "Signature")]
    Signature,
    #[graphql(name = "Impossible")]
    Impossible,
}

/// Where a transaction is, as `transactionStatus` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[graphql(name = "TransactionStatus")]
pub enum TransactionStatus {
    Included,
    Pending,
    Unknown,
}

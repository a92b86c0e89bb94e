//! Accounts of the simulated ledger: every key has one (`chain::ledger_account_of`),
//! resolved field by field so that nested accounts (`delegateAccount`) cost
//! nothing unless asked for.

use async_graphql::{Context, Object, SimpleObject};

use super::NodeView;
use super::scalars::{
    AccountAuthRequired, AccountNonce, Action, Amount, Balance, ChainHash, FieldElem,
    GlobalSlotSpan, Globalslot, Length, PublicKey, StateHash, TokenId, VerificationKey,
    VerificationKeyHash,
};
use crate::simulator::chain::{self, LedgerAccount};

/// The MINA account of a key (the simulated ledger holds no other token).
#[derive(Debug, Clone)]
pub struct Account {
    key: String,
}

impl Account {
    pub fn of(key: &str) -> Self {
        Self {
            key: key.to_owned(),
        }
    }

    fn ledger(&self) -> LedgerAccount {
        chain::ledger_account_of(&self.key)
    }

    fn is_producer(&self) -> bool {
        (0..7).any(|n| chain::creator(n) == self.key)
    }
}

/// How much of a balance is locked by vesting, at the node's best tip.
#[derive(SimpleObject)]
#[graphql(name = "AnnotatedBalance")]
pub struct AnnotatedBalance {
    total: Balance,
    unknown: Balance,
    liquid: Option<Balance>,
    locked: Option<Balance>,
    block_height: Length,
    state_hash: Option<StateHash>,
}

#[derive(SimpleObject)]
#[graphql(name = "AccountTiming")]
pub struct AccountTiming {
    initial_minimum_balance: Option<Balance>,
    cliff_time: Option<Globalslot>,
    cliff_amount: Option<Amount>,
    vesting_period: Option<GlobalSlotSpan>,
    vesting_increment: Option<Amount>,
}

#[derive(SimpleObject)]
#[graphql(name = "VerificationKeyPermission")]
pub struct VerificationKeyPermission {
    auth: AccountAuthRequired,
    txn_version: String,
}

#[derive(SimpleObject)]
#[graphql(name = "AccountPermissions")]
pub struct AccountPermissions {
    edit_state: AccountAuthRequired,
    send: AccountAuthRequired,
    receive: AccountAuthRequired,
    access: AccountAuthRequired,
    set_delegate: AccountAuthRequired,
    set_permissions: AccountAuthRequired,
    set_verification_key: VerificationKeyPermission,
    set_zkapp_uri: AccountAuthRequired,
    edit_action_state: AccountAuthRequired,
    set_token_symbol: AccountAuthRequired,
    increment_nonce: AccountAuthRequired,
    set_voting_for: AccountAuthRequired,
    set_timing: AccountAuthRequired,
}

impl AccountPermissions {
    /// Mina's default permissions; a zkApp's state and actions need its proof.
    fn of(zkapp: bool) -> Self {
        use AccountAuthRequired::{NoAuthorization, Proof, Signature};
        let owner = if zkapp { Proof } else { Signature };
        Self {
            edit_state: owner,
            send: Signature,
            receive: NoAuthorization,
            access: NoAuthorization,
            set_delegate: Signature,
            set_permissions: Signature,
            set_verification_key: VerificationKeyPermission {
                auth: Signature,
                txn_version: chain::TXN_VERSION.to_string(),
            },
            set_zkapp_uri: Signature,
            edit_action_state: owner,
            set_token_symbol: Signature,
            increment_nonce: Signature,
            set_voting_for: Signature,
            set_timing: Signature,
        }
    }
}

#[derive(SimpleObject)]
#[graphql(name = "AccountVerificationKeyWithHash")]
pub struct AccountVerificationKeyWithHash {
    verification_key: VerificationKey,
    hash: VerificationKeyHash,
}

/// Pending transactions of `key` in the pool of the node answering.
fn pending_of(view: &NodeView, key: &str) -> u32 {
    let payments = chain::pooled_payments(&view.host)
        .iter()
        .filter(|c| c.from == key)
        .count();
    let zkapps = chain::pooled_zkapp_commands(&view.host)
        .iter()
        .filter(|c| c.fee_payer == key)
        .count();
    u32::try_from(payments + zkapps).unwrap_or(u32::MAX)
}

#[Object(name = "Account")]
impl Account {
    async fn public_key(&self) -> PublicKey {
        PublicKey(self.key.clone())
    }

    async fn token_id(&self) -> TokenId {
        TokenId(chain::DEFAULT_TOKEN.to_owned())
    }

    async fn token(&self) -> TokenId {
        TokenId(chain::DEFAULT_TOKEN.to_owned())
    }

    async fn timing(&self) -> AccountTiming {
        let timing = self.ledger().timing;
        AccountTiming {
            initial_minimum_balance: timing.map(|t| Balance::of(t.initial_minimum_balance)),
            cliff_time: timing.map(|t| Globalslot::of(t.cliff_time)),
            cliff_amount: timing.map(|t| Amount::of(t.cliff_amount)),
            vesting_period: timing.map(|t| GlobalSlotSpan::of(t.vesting_period)),
            vesting_increment: timing.map(|t| Amount::of(t.vesting_increment)),
        }
    }

    /// The balance at the node's best tip (the part still vesting is locked).
    async fn balance(&self, ctx: &Context<'_>) -> async_graphql::Result<AnnotatedBalance> {
        let tip = ctx.data::<NodeView>()?.state.blockchain_length;
        let ledger = self.ledger();
        let locked = ledger
            .timing
            .map(|t| t.minimum_balance_at(chain::slot_of(tip)))
            .unwrap_or(0)
            .min(ledger.balance);
        Ok(AnnotatedBalance {
            total: Balance::of(ledger.balance),
            unknown: Balance::of(ledger.balance),
            liquid: Some(Balance::of(ledger.balance - locked)),
            locked: Some(Balance::of(locked)),
            block_height: Length::of(tip),
            state_hash: (tip > 0).then(|| StateHash(chain::state_hash(tip))),
        })
    }

    async fn nonce(&self) -> Option<AccountNonce> {
        Some(AccountNonce::of(self.ledger().nonce))
    }

    /// The nonce after the account's transactions waiting in the pool.
    async fn inferred_nonce(
        &self,
        ctx: &Context<'_>,
    ) -> async_graphql::Result<Option<AccountNonce>> {
        let pending = pending_of(ctx.data::<NodeView>()?, &self.key);
        Ok(Some(AccountNonce::of(self.ledger().nonce + pending)))
    }

    /// Every simulated account delegates to itself.
    async fn epoch_delegate_account(&self) -> Option<Account> {
        Some(Account::of(&self.key))
    }

    async fn receipt_chain_hash(&self) -> Option<ChainHash> {
        Some(ChainHash(self.ledger().receipt_chain_hash))
    }

    async fn delegate(&self) -> Option<PublicKey> {
        Some(PublicKey(self.key.clone()))
    }

    async fn delegate_account(&self) -> Option<Account> {
        Some(Account::of(&self.key))
    }

    async fn delegators(&self) -> Option<Vec<Account>> {
        Some(vec![Account::of(&self.key)])
    }

    async fn last_epoch_delegators(&self) -> Option<Vec<Account>> {
        Some(vec![Account::of(&self.key)])
    }

    async fn voting_for(&self) -> Option<ChainHash> {
        Some(ChainHash(chain::zero_state_hash()))
    }

    /// Whether the key produces blocks (the simulated chain's seven producers).
    async fn staking_active(&self) -> bool {
        self.is_producer()
    }

    async fn zkapp_uri(&self) -> Option<String> {
        self.ledger().zkapp.map(|z| z.zkapp_uri)
    }

    async fn zkapp_state(&self) -> Option<Vec<FieldElem>> {
        self.ledger()
            .zkapp
            .map(|z| z.app_state.into_iter().map(FieldElem).collect())
    }

    async fn proved_state(&self) -> Option<bool> {
        self.ledger().zkapp.map(|_| true)
    }

    async fn permissions(&self) -> Option<AccountPermissions> {
        Some(AccountPermissions::of(self.ledger().zkapp.is_some()))
    }

    async fn token_symbol(&self) -> Option<String> {
        self.ledger().zkapp.map(|_| String::new())
    }

    async fn verification_key(&self) -> Option<AccountVerificationKeyWithHash> {
        self.ledger().zkapp.map(|z| AccountVerificationKeyWithHash {
            verification_key: VerificationKey(z.verification_key),
            hash: VerificationKeyHash(z.verification_key_hash),
        })
    }

    async fn action_state(&self) -> Option<Vec<Action>> {
        self.ledger()
            .zkapp
            .map(|z| z.action_state.into_iter().map(Action).collect())
    }
}

//! The simulated daemon's GraphQL schema: the node-level read queries of Mina's
//! schema, with Mina's exact type names, field names and nullability (checked
//! against the embedded Mina schema by `tests/schema.rs`). Answers come from the
//! node's state and the simulated chain (`super::chain`).

mod account;
mod block;
mod commands;
mod daemon;
mod scalars;

use async_graphql::{Context, EmptyMutation, Object, SimpleObject};

use super::chain;
use super::node::{NodeState, SyncStatus};
use super::subscriptions::Subscription;
use account::Account;
use async_graphql::ID;
use block::CompletedWork;
pub use block::{Block, block};
use commands::{UserCommand, ZkappCommandResult};
use daemon::{DaemonStatus, GenesisConstants, Peer, SnarkWorker, TrustStatusPayload};
pub use scalars::PublicKey;
use scalars::{TokenId, TransactionStatus, UInt32};

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

fn view<'a>(ctx: &Context<'a>) -> async_graphql::Result<&'a NodeView> {
    ctx.data::<NodeView>()
}

fn error(message: impl Into<String>) -> async_graphql::Error {
    async_graphql::Error::new(message)
}

/// A `publicKey` argument: Mina refuses what is not a key.
fn checked_key(key: &PublicKey) -> async_graphql::Result<&str> {
    if chain::is_public_key(&key.0) {
        Ok(&key.0)
    } else {
        Err(error(format!("Couldn't parse public key {:?}", key.0)))
    }
}

/// An action a zkApp emitted, where it was emitted.
#[derive(SimpleObject)]
#[graphql(name = "ActionState")]
pub struct ActionState {
    action: Vec<Vec<Option<String>>>,
    transaction_sequence_no: i32,
    action_sequence_no: i32,
    block_number: UInt32,
}

/// Mina's root query type (named `query` in its schema).
pub struct Query;

#[Object(name = "query")]
impl Query {
    async fn sync_status(&self, ctx: &Context<'_>) -> async_graphql::Result<SyncStatus> {
        Ok(view(ctx)?.state.sync_status)
    }

    async fn version(&self, ctx: &Context<'_>) -> async_graphql::Result<Option<String>> {
        Ok(Some(view(ctx)?.state.version.clone()))
    }

    async fn daemon_status(&self, ctx: &Context<'_>) -> async_graphql::Result<DaemonStatus> {
        Ok(DaemonStatus(view(ctx)?.clone()))
    }

    /// The network the node is on: `mina:mainnet` on mainnet's chain id,
    /// `mina:testnet` on any other.
    #[graphql(name = "networkID")]
    async fn network_id(&self, ctx: &Context<'_>) -> async_graphql::Result<String> {
        Ok(format!(
            "mina:{}",
            chain::network(&view(ctx)?.state.chain_id)
        ))
    }

    /// Which network's signatures the node checks: `mainnet` or `testnet`.
    async fn signature_kind(&self, ctx: &Context<'_>) -> async_graphql::Result<String> {
        Ok(chain::network(&view(ctx)?.state.chain_id).to_owned())
    }

    /// The node's peers (as `daemonStatus.peers`).
    async fn get_peers(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<Peer>> {
        Ok(daemon::peers(view(ctx)?))
    }

    /// The seed peers the node started from, as multiaddrs.
    async fn initial_peers(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<String>> {
        Ok(daemon::initial_peers(view(ctx)?))
    }

    /// The node's trust in its peers at `ipAddress`.
    async fn trust_status(
        &self,
        ctx: &Context<'_>,
        ip_address: String,
    ) -> async_graphql::Result<Option<Vec<TrustStatusPayload>>> {
        if ip_address.parse::<std::net::IpAddr>().is_err() {
            return Err(error(format!("Invalid IP address {ip_address:?}")));
        }
        Ok(Some(daemon::trust_status(view(ctx)?, Some(&ip_address))))
    }

    async fn trust_status_all(
        &self,
        ctx: &Context<'_>,
    ) -> async_graphql::Result<Vec<TrustStatusPayload>> {
        Ok(daemon::trust_status(view(ctx)?, None))
    }

    /// The accounts whose keys the node holds: its block producer's.
    async fn owned_wallets(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<Account>> {
        Ok(daemon::owned_accounts(view(ctx)?))
    }

    async fn tracked_accounts(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<Account>> {
        Ok(daemon::owned_accounts(view(ctx)?))
    }

    /// The node's wallet of `publicKey`, if it holds that key.
    async fn wallet(
        &self,
        ctx: &Context<'_>,
        public_key: PublicKey,
    ) -> async_graphql::Result<Option<Account>> {
        let key = checked_key(&public_key)?;
        Ok((daemon::producer_key(view(ctx)?) == key).then(|| Account::of(key)))
    }

    /// An account of the ledger: any key that looks like one (`B62…`) has a
    /// MINA account, and none of another token.
    async fn account(
        &self,
        public_key: PublicKey,
        token: Option<TokenId>,
    ) -> async_graphql::Result<Option<Account>> {
        let key = checked_key(&public_key)?;
        if let Some(token) = token.as_ref().filter(|t| !chain::is_token_id(&t.0)) {
            return Err(error(format!("Couldn't parse token id {:?}", token.0)));
        }
        let mina = token.is_none_or(|t| t.0 == chain::DEFAULT_TOKEN);
        Ok(mina.then(|| Account::of(key)))
    }

    /// Every account of a key: the simulated ledger holds MINA only.
    async fn accounts(&self, public_key: PublicKey) -> async_graphql::Result<Vec<Account>> {
        Ok(vec![Account::of(checked_key(&public_key)?)])
    }

    /// The account that owns a token: none, as the simulated ledger holds MINA
    /// only (which no account owns).
    async fn token_owner(&self, token_id: TokenId) -> async_graphql::Result<Option<Account>> {
        if !chain::is_token_id(&token_id.0) {
            return Err(error(format!("Couldn't parse token id {:?}", token_id.0)));
        }
        Ok(None)
    }

    /// The node's SNARK worker.
    async fn current_snark_worker(
        &self,
        ctx: &Context<'_>,
    ) -> async_graphql::Result<Option<SnarkWorker>> {
        Ok(Some(daemon::snark_worker(view(ctx)?)))
    }

    /// Completed SNARK work the node holds.
    async fn snark_pool(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<CompletedWork>> {
        Ok(daemon::snark_pool(view(ctx)?))
    }

    /// The newest blocks of the best chain, oldest first (at most the frontier's).
    async fn best_chain(
        &self,
        ctx: &Context<'_>,
        max_length: Option<i32>,
    ) -> async_graphql::Result<Option<Vec<Block>>> {
        let frontier = chain::frontier(view(ctx)?.state.blockchain_length);
        let wanted = u32::try_from(max_length.unwrap_or(10).max(0)).unwrap_or(0);
        let first = frontier
            .end()
            .saturating_sub(wanted.saturating_sub(1))
            .max(*frontier.start());
        if wanted == 0 || frontier.is_empty() {
            return Ok(Some(Vec::new()));
        }
        Ok(Some((first..=*frontier.end()).map(Block).collect()))
    }

    /// A block of the transition frontier (the newest `k` = 290), by height or
    /// state hash: exactly one of them.
    async fn block(
        &self,
        ctx: &Context<'_>,
        height: Option<i32>,
        state_hash: Option<String>,
    ) -> async_graphql::Result<Block> {
        let frontier = chain::frontier(view(ctx)?.state.blockchain_length);
        match (height, state_hash) {
            (Some(height), None) => u32::try_from(height)
                .ok()
                .filter(|h| frontier.contains(h))
                .map(Block)
                .ok_or_else(|| {
                    error(format!(
                        "Could not find block in transition frontier with height {height}"
                    ))
                }),
            (None, Some(hash)) => chain::height_of(&hash)
                .filter(|h| frontier.contains(h))
                .map(Block)
                .ok_or_else(|| {
                    error(format!(
                        "Block with state hash {hash} not found in transition frontier"
                    ))
                }),
            _ => Err(error("Must provide exactly one of state hash, height")),
        }
    }

    /// The chain's first block (height 1).
    async fn genesis_block(&self) -> Block {
        Block(1)
    }

    async fn genesis_constants(&self) -> GenesisConstants {
        GenesisConstants::mainnet()
    }

    /// Seconds the node's clock is set ahead of the system's.
    async fn time_offset(&self) -> i32 {
        0
    }

    /// The node's runtime configuration: the genesis and proof constants the
    /// other answers use, and its genesis ledger.
    async fn runtime_config(&self) -> async_graphql::Json<serde_json::Value> {
        async_graphql::Json(serde_json::json!({
            "genesis": {
                "k": chain::K,
                "delta": chain::DELTA,
                "slots_per_epoch": chain::SLOTS_PER_EPOCH,
                "genesis_state_timestamp": chain::GENESIS_TIMESTAMP,
            },
            "proof": {
                "block_window_duration_ms": chain::SLOT_MILLIS,
                "coinbase_amount": (chain::COINBASE / 1_000_000_000).to_string(),
                "account_creation_fee": (chain::ACCOUNT_CREATION_FEE / 1_000_000_000).to_string(),
            },
            "ledger": {
                "hash": chain::GENESIS_LEDGER_HASH,
            },
        }))
    }

    /// The node's pending user commands, of `publicKey` when given.
    async fn pooled_user_commands(
        &self,
        ctx: &Context<'_>,
        public_key: Option<PublicKey>,
        ids: Option<Vec<ID>>,
        hashes: Option<Vec<String>>,
    ) -> async_graphql::Result<Vec<UserCommand>> {
        let view = view(ctx)?;
        Ok(chain::pooled_payments(&view.host)
            .into_iter()
            .filter(|c| public_key.as_ref().is_none_or(|k| k.0 == c.from))
            .filter(|c| {
                ids.as_ref()
                    .is_none_or(|ids| ids.iter().any(|i| i.as_str() == c.id))
            })
            .filter(|c| hashes.as_ref().is_none_or(|h| h.contains(&c.hash)))
            .map(UserCommand::of)
            .collect())
    }

    /// The node's pending zkApp commands, of fee payer `publicKey` when given.
    async fn pooled_zkapp_commands(
        &self,
        ctx: &Context<'_>,
        public_key: Option<PublicKey>,
        ids: Option<Vec<ID>>,
        hashes: Option<Vec<String>>,
    ) -> async_graphql::Result<Vec<ZkappCommandResult>> {
        let view = view(ctx)?;
        Ok(chain::pooled_zkapp_commands(&view.host)
            .into_iter()
            .filter(|c| public_key.as_ref().is_none_or(|k| k.0 == c.fee_payer))
            .filter(|c| {
                ids.as_ref()
                    .is_none_or(|ids| ids.iter().any(|i| i.as_str() == c.id))
            })
            .filter(|c| hashes.as_ref().is_none_or(|h| h.contains(&c.hash)))
            .map(ZkappCommandResult)
            .collect())
    }

    /// Where a transaction is, by its id: `PENDING` in the node's pool,
    /// `INCLUDED` in a block of its transition frontier, `UNKNOWN` otherwise.
    async fn transaction_status(
        &self,
        ctx: &Context<'_>,
        zkapp_transaction: Option<ID>,
        payment: Option<ID>,
    ) -> async_graphql::Result<TransactionStatus> {
        let view = view(ctx)?;
        let (id, zkapp, pending) = match (zkapp_transaction, payment) {
            (Some(id), None) => {
                let pool = chain::pooled_zkapp_commands(&view.host);
                let pending = pool.iter().any(|c| c.id == id.as_str());
                (id, true, pending)
            }
            (None, Some(id)) => {
                let pool = chain::pooled_payments(&view.host);
                let pending = pool.iter().any(|c| c.id == id.as_str());
                (id, false, pending)
            }
            _ => {
                return Err(error(
                    "Invalid query: Specify either a payment or a zkApp transaction",
                ));
            }
        };
        if !chain::is_transaction_id(&id) {
            return Err(error(format!(
                "Could not deserialize transaction id {:?}",
                id.as_str()
            )));
        }
        let frontier = chain::frontier(view.state.blockchain_length);
        Ok(if pending {
            TransactionStatus::Pending
        } else if chain::block_of_command(&id, zkapp).is_some_and(|h| frontier.contains(&h)) {
            TransactionStatus::Included
        } else {
            TransactionStatus::Unknown
        })
    }

    /// The actions a zkApp emitted in the newest `maxLength` blocks of the
    /// frontier (all of it by default), oldest first.
    async fn account_actions(
        &self,
        ctx: &Context<'_>,
        public_key: PublicKey,
        token: Option<TokenId>,
        max_length: Option<i32>,
    ) -> async_graphql::Result<Vec<ActionState>> {
        let key = checked_key(&public_key)?;
        if token.is_some_and(|t| t.0 != chain::DEFAULT_TOKEN) {
            return Ok(Vec::new());
        }
        let frontier = chain::frontier(view(ctx)?.state.blockchain_length);
        let blocks = u32::try_from(max_length.unwrap_or(i32::MAX).max(0)).unwrap_or(0);
        let first = frontier
            .end()
            .saturating_sub(blocks.saturating_sub(1))
            .max(*frontier.start());
        let mut actions = Vec::new();
        for height in first..=*frontier.end() {
            if blocks == 0 {
                break;
            }
            let (signed, zkapps) = chain::commands(height);
            for (index, command) in zkapps.iter().enumerate() {
                if command.failure.is_some() {
                    continue;
                }
                for update in command.updates.iter().filter(|u| u.public_key == key) {
                    for action in &update.actions {
                        actions.push(ActionState {
                            action: vec![action.iter().cloned().map(Some).collect()],
                            transaction_sequence_no: daemon::to_int(signed.len() + index),
                            action_sequence_no: daemon::to_int(actions.len()),
                            block_number: UInt32::of(height),
                        });
                    }
                }
            }
        }
        Ok(actions)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    fn node(tip: u32) -> NodeView {
        NodeView {
            host: "127.0.0.2".to_owned(),
            port: 3085,
            state: NodeState {
                blockchain_length: tip,
                ..NodeState::default()
            },
            uptime_secs: 0,
        }
    }

    /// The answer's data, and its errors' messages.
    /// The token id of the field `n`.
    fn base58_token(n: u8) -> String {
        let mut field = [0; 32];
        field[0] = n;
        crate::simulator::base58::raw(crate::simulator::base58::Kind::TokenId, &field)
    }

    async fn ask(view: &NodeView, query: &str) -> (Value, Vec<String>) {
        let request = async_graphql::Request::new(query).data(view.clone());
        let response = schema().execute(request).await;
        let errors = response.errors.iter().map(|e| e.message.clone()).collect();
        (response.data.into_json().unwrap_or(Value::Null), errors)
    }

    async fn data(view: &NodeView, query: &str) -> Value {
        let (data, errors) = ask(view, query).await;
        assert!(errors.is_empty(), "{query}: {errors:?}");
        data
    }

    const BLOCK: &str = "fragment B on Block {
        stateHash stateHashField creator commandTransactionCount
        creatorAccount { publicKey } winnerAccount { publicKey }
        snarkJobs { prover fee workIds }
        protocolState {
          previousStateHash
          blockchainState { date utcDate snarkedLedgerHash stagedLedgerHash stagedLedgerAuxHash
            stagedLedgerPendingCoinbaseAux stagedLedgerPendingCoinbaseHash stagedLedgerProofEmitted
            bodyReference ledgerProofStatement { connectingLedgerLeft connectingLedgerRight
              sourceRegisters { firstPassLedger localState { ledger excess { sign amountMagnitude } } }
              targetRegisters { secondPassLedger pendingCoinbaseStack { dataStack stateStack { initial current } } }
              supplyIncrease { sign amountMagnitude } feeExcess { feeTokenLeft feeExcessLeft { sign feeMagnitude } }
              sokDigest } }
          consensusState { blockchainLength blockHeight epochCount minWindowDensity lastVrfOutput
            totalCurrency hasAncestorInSameCheckpointWindow slot slotSinceGenesis epoch
            superchargedCoinbase blockStakeWinner blockCreator coinbaseReceiever
            stakingEpochData { ledger { hash totalCurrency } seed startCheckpoint lockCheckpoint epochLength }
            nextEpochData { ledger { hash totalCurrency } seed startCheckpoint lockCheckpoint epochLength } }
        }
        transactions {
          coinbase coinbaseReceiverAccount { publicKey }
          feeTransfer { recipient fee type }
          userCommands { __typename id hash kind nonce amount fee memo from to isDelegation
            source { publicKey } receiver { publicKey } feePayer { publicKey } validUntil token feeToken
            failureReason
            ... on UserCommandDelegation { delegator { publicKey } delegatee { publicKey } } }
          zkappCommands { id hash failureReason { index failures }
            zkappCommand { memo feePayer { body { publicKey fee nonce validUntil } authorization }
              accountUpdates { body { publicKey tokenId balanceChange { magnitude sgn } actions
                callDepth authorizationKind { isSigned } update { appState delegate votingFor }
                preconditions { validWhile { lower upper }
                  network { blockchainLength { lower upper }
                    stakingEpochData { ledger { totalCurrency { lower upper } } } }
                  account { state nonce { lower upper } balance { upper } provedState isNew } } }
                authorization { signature } } } }
        }
      }";

    #[tokio::test]
    async fn a_block_is_the_same_whichever_way_it_is_asked_for() {
        let view = node(1000);
        let hash = chain::state_hash(999);
        let query = format!(
            "{{ bestChain(maxLength: 3) {{ ...B }} byHeight: block(height: 999) {{ ...B }}
               byHash: block(stateHash: \"{hash}\") {{ ...B }} }} {BLOCK}"
        );
        let answer = data(&view, &query).await;
        let chain = answer["bestChain"].as_array().unwrap();
        assert_eq!(chain.len(), 3);
        assert_eq!(chain[1], answer["byHeight"]);
        assert_eq!(chain[1], answer["byHash"]);
        assert_eq!(chain[1]["stateHash"], hash.as_str());
        for pair in chain.windows(2) {
            assert_eq!(
                pair[1]["protocolState"]["previousStateHash"],
                pair[0]["stateHash"]
            );
        }
        for block in chain {
            let transactions = &block["transactions"];
            let commands = transactions["userCommands"].as_array().unwrap().len()
                + transactions["zkappCommands"].as_array().unwrap().len();
            assert_eq!(block["commandTransactionCount"], json!(commands));
            assert_eq!(
                block["creator"],
                block["protocolState"]["consensusState"]["blockCreator"]
            );
        }
        // Block 994 holds a delegation and a zkApp command that failed.
        let answer = data(
            &view,
            &format!("{{ block(height: 994) {{ ...B }} }} {BLOCK}"),
        )
        .await;
        let transactions = &answer["block"]["transactions"];
        let kinds: Vec<&Value> = transactions["userCommands"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| &c["__typename"])
            .collect();
        assert!(
            kinds.contains(&&json!("UserCommandDelegation")),
            "{kinds:?}"
        );
        let failure = &transactions["zkappCommands"][0]["failureReason"][0];
        assert_eq!(failure["index"], "1", "{transactions}");
        assert_eq!(
            transactions["zkappCommands"][1]["failureReason"],
            Value::Null
        );
        // The failed one required a state its zkApp does not have.
        for (i, holds) in [(0, false), (1, true)] {
            let update = &transactions["zkappCommands"][i]["zkappCommand"]["accountUpdates"][0];
            let key = update["body"]["publicKey"].as_str().unwrap();
            let required = &update["body"]["preconditions"]["account"]["state"][0];
            let account = data(
                &view,
                &format!("{{ account(publicKey: \"{key}\") {{ zkappState }} }}"),
            )
            .await;
            assert_eq!(
                &account["account"]["zkappState"][0] == required,
                holds,
                "{account} {required}"
            );
        }
    }

    #[tokio::test]
    async fn the_genesis_block_is_height_one_and_starts_the_chain() {
        let query = format!("{{ genesisBlock {{ ...B }} block(height: 2) {{ ...B }} }} {BLOCK}");
        let answer = data(&node(5), &query).await;
        let genesis = &answer["genesisBlock"];
        assert_eq!(
            genesis["protocolState"]["consensusState"]["blockHeight"],
            "1"
        );
        assert_eq!(
            genesis["protocolState"]["consensusState"]["slotSinceGenesis"],
            "0"
        );
        assert_eq!(genesis["commandTransactionCount"], 0);
        assert_eq!(
            answer["block"]["protocolState"]["previousStateHash"],
            genesis["stateHash"]
        );
        // Genesis stays known when it has left the frontier.
        let far = data(&node(100_000), "{ genesisBlock { stateHash } }").await;
        assert_eq!(far["genesisBlock"]["stateHash"], genesis["stateHash"]);
    }

    #[tokio::test]
    async fn blocks_outside_the_frontier_and_bad_arguments_are_errors() {
        let view = node(1000);
        for (query, expected) in [
            (
                "{ block(height: 710) { stateHash } }",
                "transition frontier",
            ),
            (
                "{ block(height: 1001) { stateHash } }",
                "transition frontier",
            ),
            ("{ block(height: -1) { stateHash } }", "transition frontier"),
            ("{ block { stateHash } }", "exactly one"),
            (
                "{ block(height: 999, stateHash: \"x\") { stateHash } }",
                "exactly one",
            ),
            (
                "{ block(stateHash: \"3NKnothing\") { stateHash } }",
                "not found",
            ),
        ] {
            let (_, errors) = ask(&view, query).await;
            assert!(
                errors.iter().any(|e| e.contains(expected)),
                "{query}: {errors:?}"
            );
        }
        let old = chain::state_hash(700);
        let (_, errors) = ask(
            &view,
            &format!("{{ block(stateHash: \"{old}\") {{ stateHash }} }}"),
        )
        .await;
        assert!(errors.iter().any(|e| e.contains("not found")), "{errors:?}");
        let answer = data(&view, "{ block(height: 711) { stateHash } }").await;
        assert_eq!(
            answer["block"]["stateHash"],
            chain::state_hash(711).as_str()
        );
    }

    #[tokio::test]
    async fn fields_outside_the_simulated_subset_are_errors_naming_them() {
        let view = node(1000);
        for (query, field) in [
            ("{ protocolState(height: 1) }", "protocolState"),
            (
                &format!(
                    "{{ tokenAccounts(tokenId: \"{}\") {{ publicKey }} }}",
                    chain::DEFAULT_TOKEN
                ) as &str,
                "tokenAccounts",
            ),
            (
                "{ bestChain { protocolStateProof { base64 } } }",
                "protocolStateProof",
            ),
            (
                "{ daemonStatus { histograms { __typename } } }",
                "histograms",
            ),
            ("{ threadGraph }", "threadGraph"),
        ] {
            let (_, errors) = ask(&view, query).await;
            assert!(
                errors.iter().any(|e| e.contains(field)),
                "{query}: {errors:?}"
            );
        }
    }

    #[tokio::test]
    async fn transaction_status_tells_pending_included_and_unknown_apart() {
        let view = node(1000);
        let status =
            |argument: &str, id: &str| format!("{{ transactionStatus({argument}: \"{id}\") }}");
        let (signed, zkapp) = chain::commands(999);
        let payment = &chain::pooled_payments(&view.host)[0];
        let (old, _) = chain::commands(7);
        for (query, expected) in [
            (status("payment", &signed[0].id), "INCLUDED"),
            (status("zkappTransaction", &zkapp[0].id), "INCLUDED"),
            (status("payment", &payment.id), "PENDING"),
            (
                status(
                    "zkappTransaction",
                    &chain::pooled_zkapp_commands(&view.host)[0].id,
                ),
                "PENDING",
            ),
            // Left the frontier long ago.
            (status("payment", &old[0].id), "UNKNOWN"),
            (status("payment", "AAAA"), "UNKNOWN"),
        ] {
            let answer = data(&view, &query).await;
            assert_eq!(answer["transactionStatus"], expected, "{query}");
        }
        for query in [
            status("payment", "not base64!"),
            "{ transactionStatus }".to_owned(),
            "{ transactionStatus(payment: \"AAAA\", zkappTransaction: \"AAAA\") }".to_owned(),
        ] {
            let (_, errors) = ask(&view, &query).await;
            assert!(!errors.is_empty(), "{query}");
        }
    }

    #[tokio::test]
    async fn a_zkapp_account_has_its_state_and_the_actions_of_the_frontier() {
        let view = node(1000);
        let zkapp = &chain::zkapps()[0];
        let fields = "publicKey zkappState provedState actionState verificationKey { hash }
                      permissions { editState send setVerificationKey { auth txnVersion } }
                      balance { total liquid locked blockHeight stateHash } inferredNonce";
        let query = format!(
            "{{ zkapp: account(publicKey: \"{zkapp}\") {{ {fields} }}
               ordinary: account(publicKey: \"{}\") {{ {fields} }}
               accountActions(publicKey: \"{zkapp}\") {{ action blockNumber actionSequenceNo }} }}",
            chain::pool_sender(&view.host)
        );
        let answer = data(&view, &query).await;
        assert_eq!(answer["zkapp"]["zkappState"].as_array().unwrap().len(), 8);
        assert_eq!(answer["zkapp"]["permissions"]["editState"], "Proof");
        assert_eq!(answer["ordinary"]["zkappState"], Value::Null);
        assert_eq!(answer["ordinary"]["permissions"]["editState"], "Signature");
        // Two payments and a zkApp command wait in the pool.
        assert_eq!(answer["ordinary"]["inferredNonce"], "3");
        assert_eq!(answer["zkapp"]["balance"]["blockHeight"], "1000");
        let actions = answer["accountActions"].as_array().unwrap();
        assert!(!actions.is_empty());
        for (i, action) in actions.iter().enumerate() {
            let height: u32 = action["blockNumber"].as_str().unwrap().parse().unwrap();
            assert!(chain::frontier(1000).contains(&height));
            assert_eq!(action["actionSequenceNo"], json!(i));
        }
        let other_token = base58_token(7);
        let other = data(
            &view,
            &format!("{{ account(publicKey: \"{zkapp}\", token: \"{other_token}\") {{ nonce }} }}"),
        )
        .await;
        assert_eq!(other["account"], Value::Null);
        let (_, errors) = ask(&view, "{ account(publicKey: \"B62short\") { nonce } }").await;
        assert!(!errors.is_empty());
        let (_, errors) = ask(
            &view,
            &format!("{{ account(publicKey: \"{zkapp}\", token: \"nope\") {{ nonce }} }}"),
        )
        .await;
        assert!(!errors.is_empty());
    }

    #[tokio::test]
    async fn the_node_produces_the_blocks_of_its_key_and_reports_its_pools() {
        let view = node(1000);
        let answer = data(
            &view,
            "{ daemonStatus { blockProductionKeys coinbaseReceiver snarkWorker
                 nextBlockProduction { globalSlotSinceGenesis generatedFromConsensusAt { globalSlotSinceGenesis } }
                 consensusConfiguration { k slotsPerEpoch slotDuration epochDuration genesisStateTimestamp }
                 metrics { transactionPoolSize snarkPoolSize } }
               currentSnarkWorker { key fee account { publicKey } }
               ownedWallets { publicKey } snarkPool { prover }
               pooledUserCommands { id } pooledZkappCommands { id }
               genesisConstants { genesisTimestamp coinbase accountCreationFee }
               networkID signatureKind initialPeers trustStatusAll { ipAddr peerId trust }
               timeOffset runtimeConfig
               tokenOwner(tokenId: \"wSHV2S4qX9jFsLjQo8r1BsMLH2ZRKsZx6EJd1sbozGPieEC4Jf\") { publicKey } }",
        )
        .await;
        let status = &answer["daemonStatus"];
        let key = status["blockProductionKeys"][0].as_str().unwrap();
        assert_eq!(status["coinbaseReceiver"], key);
        assert_eq!(answer["ownedWallets"][0]["publicKey"], key);
        let next: u32 = status["nextBlockProduction"]["globalSlotSinceGenesis"][0]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        let height = next / 2 + 1;
        assert!(height > 1000 && height <= 1007);
        assert_eq!(chain::creator(height), key);
        assert_eq!(status["snarkWorker"], answer["currentSnarkWorker"]["key"]);
        assert_eq!(answer["snarkPool"][0]["prover"], status["snarkWorker"]);
        let pool = answer["pooledUserCommands"].as_array().unwrap().len()
            + answer["pooledZkappCommands"].as_array().unwrap().len();
        assert_eq!(status["metrics"]["transactionPoolSize"], json!(pool));
        assert_eq!(answer["networkID"], "mina:mainnet");
        assert_eq!(answer["signatureKind"], "mainnet");
        assert_eq!(
            answer["runtimeConfig"]["genesis"]["k"],
            status["consensusConfiguration"]["k"]
        );
        assert_eq!(
            answer["genesisConstants"]["coinbase"],
            chain::COINBASE.to_string().as_str()
        );
        assert_eq!(answer["initialPeers"].as_array().unwrap().len(), 3);
        assert_eq!(answer["tokenOwner"], Value::Null);
    }
}

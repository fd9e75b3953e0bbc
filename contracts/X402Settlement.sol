// SPDX-License-Identifier: MIT
pragma solidity ^0.8.20;

/// x402 batch settlement: executes many signed payments of one token in one transaction.
/// Each item is isolated (a low-level call with a fixed gas stipend): a bad payment fails on
/// its own and the others settle. Every item emits `ItemResult` (its index in the batch,
/// whether its permit() and its transfer succeeded, and the transfer's revert data).
/// Only operators (the settler's wallets, set at deploy by the owner) may call `settle`, so
/// nobody else can burn signed items. For EIP-2612 items this contract is the permit spender.
contract X402Settlement {
    /// kind: 0 = ERC-3009 transferWithAuthorization, 1 = EIP-2612 permit + transferFrom,
    /// 2 = transferFrom only (the permit was executed before; the allowance covers it).
    struct Item {
        uint8 kind;
        address from;
        address to;
        uint256 value;
        uint256 validAfter;
        uint256 deadline;
        bytes32 nonce;
        uint8 v;
        bytes32 r;
        bytes32 s;
    }

    event ItemResult(uint256 index, bool permitOk, bool ok, bytes reason);
    event OperatorSet(address indexed operator, bool allowed);

    /// Gas given to each call an item makes (permit, transferFrom, transferWithAuthorization).
    uint256 public constant CALL_GAS = 100_000;
    /// Gas an item needs left before it starts (its calls and the event); less reverts the
    /// whole batch, so no item ever fails for lack of gas.
    uint256 public constant ITEM_RESERVE = 15_000;

    address public immutable owner;
    mapping(address => bool) public operators;

    constructor(address[] memory initialOperators) {
        owner = msg.sender;
        for (uint256 i = 0; i < initialOperators.length; i++) {
            operators[initialOperators[i]] = true;
            emit OperatorSet(initialOperators[i], true);
        }
    }

    function setOperator(address operator, bool allowed) external {
        require(msg.sender == owner, "X402Settlement: not the owner");
        operators[operator] = allowed;
        emit OperatorSet(operator, allowed);
    }

    function settle(address token, Item[] calldata items) external {
        require(operators[msg.sender], "X402Settlement: not an operator");
        for (uint256 i = 0; i < items.length; i++) {
            Item calldata it = items[i];
            uint256 calls = it.kind == 1 ? 2 : 1;
            require(gasleft() >= calls * CALL_GAS + ITEM_RESERVE, "X402Settlement: out of gas for the batch");
            bool permitOk = true;
            bool ok;
            bytes memory ret;
            if (it.kind == 0) {
                (ok, ret) = token.call{gas: CALL_GAS}(
                    abi.encodeWithSelector(
                        0xe3ee160e, // transferWithAuthorization(address,address,uint256,uint256,uint256,bytes32,uint8,bytes32,bytes32)
                        it.from, it.to, it.value, it.validAfter, it.deadline, it.nonce, it.v, it.r, it.s
                    )
                );
            } else {
                if (it.kind == 1) {
                    (permitOk,) = token.call{gas: CALL_GAS}(
                        abi.encodeWithSelector(
                            0xd505accf, // permit(address,address,uint256,uint256,uint8,bytes32,bytes32)
                            it.from, address(this), it.value, it.deadline, it.v, it.r, it.s
                        )
                    );
                }
                (ok, ret) = token.call{gas: CALL_GAS}(
                    abi.encodeWithSelector(0x23b872dd, it.from, it.to, it.value) // transferFrom
                );
                if (ok && ret.length > 0) {
                    ok = ret.length == 32 && abi.decode(ret, (bool));
                }
            }
            emit ItemResult(i, permitOk, ok, ok ? bytes("") : ret);
        }
    }
}

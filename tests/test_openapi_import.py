"""OpenAPI import: a petstore-like 3.0 document and a 3.1 one become valid toolsim tools."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from toolsim.errors import InvalidToolDefinitionError
from toolsim.toolsets import build_toolset
from toolsim_toolmaker.openapi_import import ImportedTool, import_openapi, tool_name

PETSTORE_30: dict[str, Any] = {
    "openapi": "3.0.3",
    "info": {"title": "Petstore", "version": "1.0.0"},
    "paths": {
        "/pets": {
            "get": {
                "operationId": "listPets",
                "summary": "List all pets",
                "parameters": [
                    {
                        "name": "limit",
                        "in": "query",
                        "description": "How many items to return at one time (max 100)",
                        "required": False,
                        "schema": {"type": "integer", "format": "int32", "maximum": 100},
                    },
                    {"$ref": "#/components/parameters/TraceId"},
                ],
                "responses": {
                    "200": {
                        "description": "A paged array of pets",
                        "content": {
                            "application/json": {"schema": {"$ref": "#/components/schemas/Pets"}}
                        },
                    },
                    "default": {"$ref": "#/components/responses/Error"},
                },
            },
            "post": {
                "operationId": "create.pet",
                "summary": "Create a pet",
                "description": "Adds a pet to the store.",
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {"schema": {"$ref": "#/components/schemas/NewPet"}}
                    },
                },
                "responses": {
                    "201": {
                        "description": "Created",
                        "content": {
                            "application/json": {"schema": {"$ref": "#/components/schemas/Pet"}}
                        },
                    },
                    "default": {"$ref": "#/components/responses/Error"},
                },
            },
        },
        "/pets/{petId}": {
            "parameters": [
                {
                    "name": "petId",
                    "in": "path",
                    "required": True,
                    "description": "The id of the pet",
                    "schema": {"type": "string"},
                },
                {"name": "verbose", "in": "query", "schema": {"type": "boolean"}},
            ],
            "get": {
                "summary": "Info for a specific pet",
                "parameters": [
                    {
                        "name": "verbose",
                        "in": "query",
                        "required": True,
                        "schema": {"type": "string", "enum": ["yes", "no"]},
                    }
                ],
                "responses": {
                    "204": {"description": "No content"},
                    "200": {
                        "description": "The pet",
                        "content": {
                            "application/json; charset=utf-8": {
                                "schema": {"$ref": "#/components/schemas/Pet"}
                            }
                        },
                    },
                },
            },
            "put": {
                "operationId": "updatePet",
                "parameters": [{"name": "name", "in": "query", "schema": {"type": "string"}}],
                "requestBody": {
                    "content": {
                        "application/json": {"schema": {"$ref": "#/components/schemas/NewPet"}}
                    }
                },
                "responses": {"204": {"description": "Updated"}},
            },
            "delete": {
                "operationId": "deletePet",
                "responses": {"204": {"description": "Deleted"}},
            },
        },
        "/pets/{petId}/tags": {
            "post": {
                "operationId": "addTags",
                "parameters": [
                    {"name": "petId", "in": "path", "required": True, "schema": {"type": "string"}}
                ],
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/vnd.pets+json": {
                            "schema": {"type": "array", "items": {"type": "string"}}
                        }
                    },
                },
                "responses": {
                    "200": {
                        "description": "The tags now on the pet",
                        "content": {
                            "application/json": {
                                "schema": {"type": "array", "items": {"type": "string"}}
                            }
                        },
                    }
                },
            }
        },
        "/categories": {
            "get": {
                "operationId": "listCategories",
                "responses": {
                    "2XX": {
                        "description": "The category tree",
                        "content": {
                            "application/json": {
                                "schema": {"$ref": "#/components/schemas/Category"}
                            }
                        },
                    }
                },
            }
        },
    },
    "components": {
        "parameters": {
            "TraceId": {
                "name": "X-Trace-Id",
                "in": "header",
                "required": True,
                "schema": {"type": "string", "example": "abc-123"},
            }
        },
        "responses": {
            "Error": {
                "description": "unexpected error",
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
            }
        },
        "schemas": {
            "NewPet": {
                "type": "object",
                "required": ["name"],
                "properties": {
                    "id": {"type": "integer", "readOnly": True},
                    "name": {"type": "string", "example": "Rex"},
                    "tag": {"type": "string", "nullable": True},
                    "weight": {"type": "number", "minimum": 0, "exclusiveMinimum": True},
                    "kind": {"type": "string", "enum": ["cat", "dog"]},
                },
            },
            "Pet": {
                "allOf": [
                    {"$ref": "#/components/schemas/NewPet"},
                    {
                        "type": "object",
                        "required": ["id"],
                        "properties": {"id": {"type": "integer", "format": "int64"}},
                    },
                ],
                "type": "object",
            },
            "Pets": {"type": "array", "items": {"$ref": "#/components/schemas/Pet"}},
            "Category": {
                "type": "object",
                "required": ["name"],
                "properties": {
                    "name": {"type": "string"},
                    "children": {
                        "type": "array",
                        "items": {"$ref": "#/components/schemas/Category"},
                    },
                },
            },
            "Error": {
                "type": "object",
                "required": ["code", "message"],
                "properties": {"code": {"type": "integer"}, "message": {"type": "string"}},
            },
        },
    },
}

STORE_31: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {"title": "Orders", "version": "2.0.0"},
    "paths": {
        "/orders/{orderId}": {
            "patch": {
                "operationId": "patchOrder",
                "summary": "Update an order",
                "parameters": [
                    {
                        "name": "orderId",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "integer"},
                    }
                ],
                "requestBody": {"$ref": "#/components/requestBodies/OrderPatch"},
                "responses": {
                    "200": {
                        "description": "The order",
                        "content": {
                            "application/json": {
                                "schema": {
                                    "$ref": "#/components/schemas/Order",
                                    "description": "The order after the patch",
                                }
                            }
                        },
                    }
                },
            }
        },
        "/health": {
            "get": {
                "responses": {
                    "default": {
                        "description": "Health",
                        "content": {"application/json": {"schema": {"type": "string"}}},
                    }
                }
            }
        },
    },
    "components": {
        "requestBodies": {
            "OrderPatch": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "required": ["orderId", "quantity"],
                            "properties": {
                                "orderId": {"type": "string"},
                                "quantity": {"type": "integer", "minimum": 1},
                                "note": {"type": ["string", "null"]},
                                "status": {"type": "string", "enum": ["open", "closed"]},
                            },
                        }
                    }
                },
            }
        },
        "schemas": {
            "Order": {
                "type": "object",
                "required": ["id"],
                "properties": {
                    "id": {"type": "integer"},
                    "status": {"type": "string"},
                    "shipped": {"type": ["boolean", "null"]},
                },
            }
        },
    },
}


def by_name(tools: list[ImportedTool]) -> dict[str, ImportedTool]:
    return {t.definition["function"]["name"]: t for t in tools}


def params(tool: ImportedTool) -> dict[str, Any]:
    parameters: dict[str, Any] = tool.definition["function"]["parameters"]
    return parameters


@pytest.fixture(scope="module")
def petstore() -> dict[str, ImportedTool]:
    return by_name(import_openapi(copy.deepcopy(PETSTORE_30)))


@pytest.fixture(scope="module")
def store31() -> dict[str, ImportedTool]:
    return by_name(import_openapi(copy.deepcopy(STORE_31)))


def test_one_tool_per_operation_with_sanitized_names(petstore: dict[str, ImportedTool]) -> None:
    assert sorted(petstore) == [
        "addTags",
        "create_pet",
        "deletePet",
        "get_pets_petId",
        "listCategories",
        "listPets",
        "updatePet",
    ]
    tool = petstore["get_pets_petId"]
    assert (tool.method, tool.path) == ("get", "/pets/{petId}")
    assert tool.definition["type"] == "function"
    assert tool.definition["function"]["strict"] is True


def test_tool_name_rules() -> None:
    assert tool_name("a.b c/d", "get", "/x") == "a_b_c_d"
    assert tool_name("x" * 100, "get", "/x") == "x" * 64
    assert tool_name(None, "delete", "/users/{id}/keys") == "delete_users_id_keys"
    assert tool_name("", "get", "/") == "get"


def test_descriptions(petstore: dict[str, ImportedTool]) -> None:
    assert (
        petstore["create_pet"].definition["function"]["description"]
        == "Create a pet\n\nAdds a pet to the store."
    )
    assert petstore["deletePet"].definition["function"]["description"] == "DELETE /pets/{petId}"


def test_parameters_are_strict_and_optional_ones_nullable(
    petstore: dict[str, ImportedTool],
) -> None:
    schema = params(petstore["listPets"])
    assert schema["type"] == "object"
    assert schema["additionalProperties"] is False
    assert sorted(schema["required"]) == ["X-Trace-Id", "limit"]
    assert schema["properties"]["limit"] == {
        "type": ["integer", "null"],
        "format": "int32",
        "maximum": 100,
        "description": "How many items to return at one time (max 100)",
    }
    # a required header from a components ref, with the OpenAPI-only `example` dropped
    assert schema["properties"]["X-Trace-Id"] == {"type": "string"}


def test_operation_parameters_override_path_level_ones(
    petstore: dict[str, ImportedTool],
) -> None:
    props = params(petstore["get_pets_petId"])["properties"]
    assert props["petId"] == {"type": "string", "description": "The id of the pet"}
    assert props["verbose"] == {"type": "string", "enum": ["yes", "no"]}
    # path-level optional `verbose` is nullable where the operation does not override it
    assert params(petstore["deletePet"])["properties"]["verbose"] == {"type": ["boolean", "null"]}


def test_object_body_is_merged_into_arguments(petstore: dict[str, ImportedTool]) -> None:
    schema = params(petstore["create_pet"])
    props = schema["properties"]
    assert sorted(props) == ["kind", "name", "tag", "weight"]  # readOnly `id` is not sent
    assert set(schema["required"]) == set(props)
    assert props["name"] == {"type": "string"}
    assert props["tag"] == {"type": ["string", "null"]}  # nullable: true, and optional
    assert props["weight"] == {"type": ["number", "null"], "exclusiveMinimum": 0}
    assert props["kind"] == {
        "anyOf": [{"type": "string", "enum": ["cat", "dog"]}, {"type": "null"}]
    }
    validator = Draft202012Validator(schema)
    assert validator.is_valid({"name": "Rex", "tag": None, "weight": None, "kind": None})
    assert not validator.is_valid({"name": "Rex", "tag": None, "weight": 0, "kind": None})
    assert not validator.is_valid({"name": "Rex"})
    assert not validator.is_valid(
        {"name": "Rex", "tag": None, "weight": 1, "kind": None, "extra": 1}
    )


def test_body_name_clash_and_optional_body(petstore: dict[str, ImportedTool]) -> None:
    props = params(petstore["updatePet"])["properties"]
    # query `name` keeps its name, the body's `name` is prefixed; an optional body is nullable
    assert props["name"] == {"type": ["string", "null"]}
    assert props["body_name"] == {"type": ["string", "null"]}
    assert props["petId"] == {"type": "string", "description": "The id of the pet"}


def test_non_object_body_goes_under_body(petstore: dict[str, ImportedTool]) -> None:
    schema = params(petstore["addTags"])
    assert schema["properties"]["body"] == {"type": "array", "items": {"type": "string"}}
    assert sorted(schema["required"]) == ["body", "petId"]


def test_output_schemas(petstore: dict[str, ImportedTool]) -> None:
    created = petstore["create_pet"].output_schema
    assert created["type"] == "object"
    assert created["allOf"][1]["properties"]["id"] == {"type": "integer", "format": "int64"}
    assert created["allOf"][0]["properties"]["tag"] == {"type": ["string", "null"]}
    listed = petstore["listPets"].output_schema
    assert listed["required"] == ["result"] and listed["additionalProperties"] is False
    assert listed["properties"]["result"]["type"] == "array"
    # 200 wins over 204 even when declared later; charset parameters still count as JSON
    assert petstore["get_pets_petId"].output_schema["allOf"][0]["required"] == ["name"]
    assert petstore["deletePet"].output_schema == {
        "type": "object",
        "properties": {"status": {"type": "integer"}},
        "required": ["status"],
        "additionalProperties": False,
    }
    assert petstore["addTags"].output_schema["properties"]["result"]["items"] == {"type": "string"}


def test_recursive_schema_is_cut_after_one_level(petstore: dict[str, ImportedTool]) -> None:
    tree = petstore["listCategories"].output_schema  # from the `2XX` response
    child = tree["properties"]["children"]["items"]
    assert child["properties"]["name"] == {"type": "string"}
    assert child["properties"]["children"]["items"] == {}
    validator = Draft202012Validator(tree)
    assert validator.is_valid({"name": "a", "children": [{"name": "b", "children": [{"x": 1}]}]})
    assert not validator.is_valid({"name": "a", "children": [{"children": []}]})


def test_openapi_31(store31: dict[str, ImportedTool]) -> None:
    assert sorted(store31) == ["get_health", "patchOrder"]
    schema = params(store31["patchOrder"])
    props = schema["properties"]
    # path `orderId` is an integer; the body's string `orderId` is prefixed
    assert props["orderId"] == {"type": "integer"}
    assert props["body_orderId"] == {"type": "string"}
    assert props["quantity"] == {"type": "integer", "minimum": 1}
    assert props["note"] == {"type": ["string", "null"]}  # already nullable: unchanged
    assert props["status"]["anyOf"][1] == {"type": "null"}
    output = store31["patchOrder"].output_schema
    assert output["description"] == "The order after the patch"  # 3.1 sibling of $ref
    assert output["properties"]["shipped"] == {"type": ["boolean", "null"]}
    # `default` is used when no 2xx is declared; a string body is wrapped
    assert store31["get_health"].output_schema["properties"]["result"] == {"type": "string"}


def test_everything_meta_validates_and_builds_a_toolset(
    petstore: dict[str, ImportedTool], store31: dict[str, ImportedTool]
) -> None:
    for tools in (petstore, store31):
        for tool in tools.values():
            Draft202012Validator.check_schema(params(tool))
            Draft202012Validator.check_schema(tool.output_schema)
            assert params(tool)["type"] == "object"
            assert len(tool.definition["function"]["description"]) <= 1024
        toolset = build_toolset(
            [t.definition for t in tools.values()],
            {name: t.output_schema for name, t in tools.items()},
        )
        assert sorted(toolset.tools) == sorted(tools)
    toolset = build_toolset(
        [petstore["create_pet"].definition], {"create_pet": petstore["create_pet"].output_schema}
    )
    tool = toolset.tools["create_pet"]
    args = tool.parse_arguments('{"name": "Rex", "tag": "good", "weight": 3.5, "kind": "dog"}')
    assert args["kind"] == "dog"


def document(**changes: Any) -> dict[str, Any]:
    doc = copy.deepcopy(PETSTORE_30)
    doc.update(changes)
    return doc


def refuse(doc: dict[str, Any], **kwargs: Any) -> InvalidToolDefinitionError:
    with pytest.raises(InvalidToolDefinitionError) as info:
        import_openapi(doc, **kwargs)
    assert info.value.code == "invalid_tool_definition"
    return info.value


def test_missing_info() -> None:
    doc = document()
    del doc["info"]
    error = refuse(doc)
    assert "'info' is a required property" in error.message
    assert error.param == "info"


def test_bad_openapi_version() -> None:
    error = refuse(document(openapi="2.5"))
    assert "unsupported OpenAPI version '2.5'" in error.message
    assert error.param == "openapi"


def test_invalid_response_points_at_it() -> None:
    doc = document()
    doc["paths"]["/pets"]["get"]["responses"]["200"] = {}
    error = refuse(doc)
    assert "'description' is a required property" in error.message
    assert error.param == "paths./pets.get.responses.200"


def test_ref_to_missing_component() -> None:
    doc = document()
    doc["paths"]["/pets"]["get"]["parameters"][1] = {"$ref": "#/components/parameters/Nope"}
    error = refuse(doc)
    assert "'#/components/parameters/Nope' points to nothing" in error.message
    assert error.param == "paths./pets.get.parameters.1.$ref"


def test_external_ref_is_refused() -> None:
    doc = document()
    doc["components"]["schemas"]["Pets"]["items"] = {"$ref": "https://example.com/pet.json"}
    error = refuse(doc)
    assert "external $ref 'https://example.com/pet.json' is not supported" in error.message
    assert error.param == "components.schemas.Pets.items.$ref"
    doc["components"]["schemas"]["Pets"]["items"] = {"$ref": "pet.yaml#/Pet"}
    assert "external $ref 'pet.yaml#/Pet'" in refuse(doc).message


@pytest.mark.parametrize("paths", [None, {}])
def test_no_paths(paths: dict[str, Any] | None) -> None:
    doc = document(openapi="3.1.0")
    if paths is None:
        del doc["paths"]
    else:
        doc["paths"] = paths
    error = refuse(doc)
    assert error.message == "the document has no paths to import"
    assert error.param == "paths"


def test_path_without_operations() -> None:
    doc = document(paths={"/pets": {"summary": "nothing here"}})
    assert refuse(doc).message == "the document has no operations to import"


def test_too_many_operations() -> None:
    error = refuse(document(), max_tools=3)
    assert "7 operations, more than 3 tools" in error.message


def test_duplicate_names_after_sanitizing() -> None:
    doc = document()
    doc["paths"]["/pets"]["get"]["operationId"] = "create pet"
    error = refuse(doc)
    assert "both become tool 'create_pet'" in error.message
    assert error.param == "paths./pets.post.operationId"


def test_exploding_mutual_recursion_is_refused() -> None:
    names = [f"S{i}" for i in range(6)]
    doc = document()
    doc["components"]["schemas"] |= {
        name: {
            "type": "object",
            "properties": {n.lower(): {"$ref": f"#/components/schemas/{n}"} for n in names},
        }
        for name in names
    }
    doc["paths"] = {
        "/s": {
            "get": {
                "responses": {
                    "200": {
                        "description": "ok",
                        "content": {
                            "application/json": {"schema": {"$ref": "#/components/schemas/S0"}}
                        },
                    }
                }
            }
        }
    }
    error = refuse(doc)
    assert "more than 512 inlined $refs" in error.message
    assert error.param == "paths./s.get.responses.200.content.application/json"
